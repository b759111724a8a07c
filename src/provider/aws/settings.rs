//! The AWS provider's part of a stack file: the top-level keys `region`, `endpoint_url`,
//! `profile` and `apply_immediately`, read and checked here (the core keeps them as written),
//! each refusal naming the line and the fix.
//!
//! It must never read credentials: the SDK's chain finds them when a call needs them.

use crate::stack::{Stack, StackError};

/// The keys an `aws` stack reads.
pub const KEYS: &[&str] = &["region", "endpoint_url", "profile", "apply_immediately"];

/// The keys every stack may set for the AWS services it uses without being an `aws` stack
/// (Secrets Manager references, state in S3).
pub const SHARED_KEYS: &[&str] = &["region", "endpoint_url", "profile"];

/// Where a stack's AWS is, as its file says.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// Whether modifications of databases apply now rather than in the maintenance window
    /// (a node's own `.apply_immediately(..)` wins).
    pub apply_immediately: bool,
}

impl Settings {
    /// The stack's AWS keys, checked.
    pub fn read(stack: &Stack) -> Result<Settings, StackError> {
        Ok(Settings {
            region: stack.setting_checked("region", |r: &String| check_region(r))?,
            endpoint_url: stack
                .setting_checked("endpoint_url", |u: &String| check_endpoint_url(u))?,
            profile: stack.setting("profile")?,
            apply_immediately: stack.setting("apply_immediately")?.unwrap_or(false),
        })
    }
}

/// An AWS region's name: lower-case letters, digits and hyphens, a letter first and a digit last
/// (`eu-west-1`, `us-gov-west-1`).
fn check_region(r: &str) -> Result<(), String> {
    let ok = r.starts_with(|c: char| c.is_ascii_lowercase())
        && r.ends_with(|c: char| c.is_ascii_digit())
        && r.contains('-')
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err("not an AWS region's name; write one such as \"eu-west-1\", or remove the key to use AWS_REGION or the profile's region".into())
    }
}

/// An endpoint URL the SDK can call: `http://` or `https://`, a host, perhaps a port and a path.
fn check_endpoint_url(u: &str) -> Result<(), String> {
    let fix = "write the endpoint as http://HOST:PORT or https://HOST (e.g. \"http://127.0.0.1:5000\" for an emulator), or remove the key to call AWS itself";
    let Some(rest) = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
    else {
        return Err(format!("not an http(s) URL; {fix}"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
        return Err(format!("no host; {fix}"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            return Err(format!("`{p}` is not a TCP port; {fix}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_endpoints_are_checked_with_their_line() {
        for ok in ["eu-west-1", "us-gov-west-1", "il-central-1"] {
            check_region(ok).unwrap();
        }
        for bad in ["", "EU-WEST-1", "eu west 1", "eu-west", "1-eu"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        for ok in [
            "http://127.0.0.1:5000",
            "https://rds.eu-west-1.amazonaws.com",
            "http://[::1]:80/x",
        ] {
            check_endpoint_url(ok).unwrap();
        }
        for bad in [
            "not a url",
            "ftp://x:1",
            "http://",
            "http://h:99999",
            "http://h:x",
        ] {
            assert!(check_endpoint_url(bad).is_err(), "{bad}");
        }
        let stack = crate::stack::Stack::parse(
            "t",
            std::path::Path::new("stacks/t.toml"),
            "plan = \"d\"\nprovider = \"aws\"\nregion = \"x\"\n",
        )
        .unwrap();
        let e = Settings::read(&stack).unwrap_err().to_string();
        assert!(
            e.starts_with("stacks/t.toml:3:1: `region = \"x\"`: not an AWS region"),
            "{e}"
        );
    }
}
