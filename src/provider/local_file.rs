//! Local files and directories as resources, an append-once step and a file read as data: enough to
//! exercise every path of the engine for real, like Terraform's local provider.
//!
//! Relative paths start at the project root. A write is atomic (temporary file, rename); this
//! provider must never delete a directory that still holds files it does not manage.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use async_trait::async_trait;

use super::{
    Ctx, DataType, Observed, Probe, ProviderError, Registry, Request, ResourceType, StepType,
};
use crate::dsl::{Declare, NodeKind, Output};
use crate::value::{get_str, Attrs, Value};

pub fn register(r: &mut Registry) {
    r.resource(DirectoryType)
        .resource(FileType)
        .step(AppendType)
        .data(ReadType);
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::new(format!(
        "{what} {}: {}",
        path.display(),
        crate::io_error::explain(&e, "it")
    ))
}

/// An imported file's or directory's id: a path relative to the project root that stays in it.
fn check_path_id(id: &str) -> Result<(), String> {
    let p = Path::new(id);
    if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!(
            "`{id}` leads outside the project; the id is the path the node declares, relative to the project root (e.g. `out/demo/config.txt`)"
        ));
    }
    Ok(())
}

fn mode_of(meta: &std::fs::Metadata) -> String {
    format!("{:04o}", meta.permissions().mode() & 0o7777)
}

/// Reads the `mode` input ("0644"); `default` when absent.
fn mode_input(inputs: &Attrs, default: u32) -> Result<u32, ProviderError> {
    match get_str(inputs, "mode") {
        None => Ok(default),
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                ProviderError::new(format!(
                    "input `mode` \"{m}\" is not an octal file mode such as \"0644\""
                ))
            }),
    }
}

fn validate_mode(inputs: &Attrs) -> Vec<String> {
    match mode_input(inputs, 0) {
        Ok(_) => vec![],
        Err(e) => vec![e.message],
    }
}

fn planned_path(inputs: &Attrs) -> Attrs {
    match inputs.get("path") {
        Some(p) if p.is_string() => Attrs::from([
            ("id".to_string(), p.clone()),
            ("path".to_string(), p.clone()),
        ]),
        _ => Attrs::new(),
    }
}

/// A directory.
#[derive(Debug, Clone)]
pub struct Directory {
    path: Value,
    mode: String,
}

impl Directory {
    pub fn new(path: impl Into<Output<String>>) -> Self {
        Directory {
            path: path.into().into(),
            mode: "0755".into(),
        }
    }
    /// Permissions, e.g. `0o750`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = format!("{mode:04o}");
        self
    }
}

impl Declare for Directory {
    const TYPE: &'static str = "local_file.directory";
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("path".to_string(), self.path),
            ("mode".to_string(), Value::String(self.mode)),
        ])
    }
}

crate::outputs!(Directory {
    path: String = "path",
});

struct DirectoryType;

fn path_input(req: &Request<'_>) -> Result<String, ProviderError> {
    get_str(req.inputs, "path")
        .map(String::from)
        .ok_or_else(|| {
            ProviderError::new(format!(
                "node `{}`: input `path` must be a string",
                req.node
            ))
        })
}

fn dir_observed(path: &str, meta: &std::fs::Metadata) -> Observed {
    Observed {
        id: path.into(),
        inputs: Attrs::from([
            ("path".to_string(), Value::from(path)),
            ("mode".to_string(), Value::from(mode_of(meta))),
        ]),
        outputs: Attrs::from([
            ("id".to_string(), Value::from(path)),
            ("path".to_string(), Value::from(path)),
        ]),
    }
}

#[async_trait]
impl ResourceType for DirectoryType {
    fn type_name(&self) -> &'static str {
        "local_file.directory"
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        check_path_id(id)
    }
    fn service(&self) -> &'static str {
        "local_file"
    }
    fn force_new(&self) -> &'static [&'static str] {
        &["path"]
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        &["id", "path"]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        validate_mode(inputs)
    }
    fn planned_outputs(&self, inputs: &Attrs, _id: &str) -> Attrs {
        planned_path(inputs)
    }
    fn id_for(&self, req: &Request<'_>) -> String {
        get_str(req.inputs, "path").unwrap_or_default().to_string()
    }
    async fn create(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        let path = path_input(req)?;
        let full = ctx.path(&path);
        std::fs::create_dir_all(&full).map_err(|e| io_err("create directory", &full, e))?;
        let mode = mode_input(req.inputs, 0o755)?;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("chmod", &full, e))?;
        let meta = std::fs::metadata(&full).map_err(|e| io_err("stat", &full, e))?;
        Ok(dir_observed(&path, &meta))
    }
    async fn read(
        &self,
        ctx: &Ctx,
        _req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        let full = ctx.path(id);
        match std::fs::metadata(&full) {
            Ok(m) if m.is_dir() => Ok(Some(dir_observed(id, &m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &full, e)),
        }
    }
    async fn update(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        id: &str,
        _changed: &[String],
    ) -> Result<Observed, ProviderError> {
        let full = ctx.path(id);
        let mode = mode_input(req.inputs, 0o755)?;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("chmod", &full, e))?;
        let meta = std::fs::metadata(&full).map_err(|e| io_err("stat", &full, e))?;
        Ok(dir_observed(id, &meta))
    }
    async fn delete(&self, ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), ProviderError> {
        let full = ctx.path(id);
        // What killed runs of ours left here is ours to remove; anything else is not.
        crate::atomic::remove_stale(&full, None);
        match std::fs::remove_dir(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                let mut names: Vec<String> = std::fs::read_dir(&full)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                let more = if names.len() > 5 {
                    format!(" and {} more", names.len() - 5)
                } else {
                    String::new()
                };
                Err(ProviderError::with_fix(
                    format!("directory {} is not empty", full.display()),
                    format!("it holds files this plan does not manage ({shown}{more}): move them away, then run again"),
                ))
            }
            Err(e) => Err(io_err("remove directory", &full, e)),
        }
    }
}

/// A file with content and mode.
#[derive(Debug, Clone)]
pub struct File {
    path: Value,
    content: Value,
    mode: String,
}

impl File {
    pub fn new(path: impl Into<Output<String>>, content: impl Into<Output<String>>) -> Self {
        File {
            path: path.into().into(),
            content: content.into().into(),
            mode: "0644".into(),
        }
    }
    /// Permissions, e.g. `0o640`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = format!("{mode:04o}");
        self
    }
}

impl Declare for File {
    const TYPE: &'static str = "local_file.file";
    const KIND: NodeKind = NodeKind::Resource;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("path".to_string(), self.path),
            ("content".to_string(), self.content),
            ("mode".to_string(), Value::String(self.mode)),
        ])
    }
}

crate::outputs!(File {
    path: String = "path",
    /// CRC-32 of the content, hex.
    checksum: String = "checksum",
});

struct FileType;

fn file_observed(path: &str, content: &[u8], meta: &std::fs::Metadata) -> Observed {
    Observed {
        id: path.into(),
        inputs: Attrs::from([
            ("path".to_string(), Value::from(path)),
            (
                "content".to_string(),
                Value::from(String::from_utf8_lossy(content).into_owned()),
            ),
            ("mode".to_string(), Value::from(mode_of(meta))),
        ]),
        outputs: Attrs::from([
            ("id".to_string(), Value::from(path)),
            ("path".to_string(), Value::from(path)),
            (
                "checksum".to_string(),
                Value::from(format!("{:08x}", crc32fast::hash(content))),
            ),
            ("size".to_string(), Value::from(content.len() as u64)),
        ]),
    }
}

/// Writes `content` to `full` atomically (see [`crate::atomic`]), first removing what killed
/// runs left of this file's temporaries.
fn write_atomic(full: &Path, content: &[u8], mode: u32) -> Result<(), ProviderError> {
    clean_temporaries(full);
    crate::atomic::write(full, content, Some(mode)).map_err(|e| io_err("write", full, e))
}

/// Removes the temporaries a killed run left of the file `full` (a write interrupted between its
/// temporary and its rename): done by the next write or delete of the file, never by a read, so
/// a preview changes nothing.
fn clean_temporaries(full: &Path) {
    if let (Some(dir), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str())) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        crate::atomic::remove_stale(dir, Some(name));
    }
}

impl FileType {
    fn write(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        let path = path_input(req)?;
        let full = ctx.path(&path);
        let content = get_str(req.inputs, "content").unwrap_or_default();
        let mode = mode_input(req.inputs, 0o644)?;
        write_atomic(&full, content.as_bytes(), mode)?;
        let meta = std::fs::metadata(&full).map_err(|e| io_err("stat", &full, e))?;
        Ok(file_observed(&path, content.as_bytes(), &meta))
    }
}

#[async_trait]
impl ResourceType for FileType {
    fn type_name(&self) -> &'static str {
        "local_file.file"
    }
    fn check_id(&self, id: &str) -> Result<(), String> {
        check_path_id(id)
    }
    fn service(&self) -> &'static str {
        "local_file"
    }
    fn force_new(&self) -> &'static [&'static str] {
        &["path"]
    }
    fn stable_outputs(&self) -> &'static [&'static str] {
        &["id", "path"]
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        validate_mode(inputs)
    }
    fn planned_outputs(&self, inputs: &Attrs, _id: &str) -> Attrs {
        planned_path(inputs)
    }
    fn id_for(&self, req: &Request<'_>) -> String {
        get_str(req.inputs, "path").unwrap_or_default().to_string()
    }
    async fn create(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Observed, ProviderError> {
        self.write(ctx, req)
    }
    async fn read(
        &self,
        ctx: &Ctx,
        _req: &Request<'_>,
        id: &str,
    ) -> Result<Option<Observed>, ProviderError> {
        let full = ctx.path(id);
        match std::fs::read(&full) {
            Ok(content) => {
                let meta = std::fs::metadata(&full).map_err(|e| io_err("stat", &full, e))?;
                Ok(Some(file_observed(id, &content, &meta)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => Err(ProviderError::new(
                format!("`{id}` is a directory, and a local_file.file is a file"),
            )),
            Err(e) => Err(io_err("read", &full, e)),
        }
    }
    async fn update(
        &self,
        ctx: &Ctx,
        req: &Request<'_>,
        _id: &str,
        _changed: &[String],
    ) -> Result<Observed, ProviderError> {
        self.write(ctx, req)
    }
    async fn delete(&self, ctx: &Ctx, _req: &Request<'_>, id: &str) -> Result<(), ProviderError> {
        let full = ctx.path(id);
        clean_temporaries(&full);
        match std::fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &full, e)),
        }
    }
}

/// A step that appends one line to a file, once: its probe finds the line.
#[derive(Debug, Clone)]
pub struct Append {
    path: Value,
    line: Value,
}

impl Append {
    pub fn line(path: impl Into<Output<String>>, line: impl Into<Output<String>>) -> Self {
        Append {
            path: path.into().into(),
            line: line.into().into(),
        }
    }
}

impl Declare for Append {
    const TYPE: &'static str = "local_file.append";
    const KIND: NodeKind = NodeKind::Step;
    fn inputs(self) -> Attrs {
        Attrs::from([
            ("path".to_string(), self.path),
            ("line".to_string(), self.line),
        ])
    }
}

struct AppendType;

#[async_trait]
impl StepType for AppendType {
    fn type_name(&self) -> &'static str {
        "local_file.append"
    }
    fn service(&self) -> &'static str {
        "local_file"
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, "line") {
            Some(l) if l.contains('\n') => vec!["input `line` must be a single line".into()],
            _ => vec![],
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let full = ctx.path(&path_input(req)?);
        let line = get_str(req.inputs, "line").unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&full)
            .map_err(|e| io_err("open", &full, e))?;
        // One write call: a line is either wholly there or not at all.
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| io_err("append to", &full, e))?;
        f.sync_all().map_err(|e| io_err("fsync", &full, e))?;
        Ok(Attrs::from([
            ("path".to_string(), Value::from(path_input(req)?)),
            ("line".to_string(), Value::from(line)),
        ]))
    }
    fn cleans_up(&self) -> bool {
        true
    }
    /// Takes the appended line out of the file again (one occurrence), and the file with it when
    /// nothing else is left in it, so that a destroy can remove the directory.
    async fn clean_up(&self, ctx: &Ctx, outputs: &Attrs) -> Result<(), ProviderError> {
        let (Some(path), Some(line)) = (get_str(outputs, "path"), get_str(outputs, "line")) else {
            return Ok(()); // recorded before appends said where: nothing known to remove
        };
        let full = ctx.path(path);
        // Steps appending to one file are cleaned up in parallel: one read-modify-write at a time.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", &full, e)),
        };
        let mut lines: Vec<&str> = text.lines().collect();
        let Some(i) = lines.iter().position(|l| *l == line) else {
            return Ok(());
        };
        lines.remove(i);
        if lines.is_empty() {
            return match std::fs::remove_file(&full) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_err("remove", &full, e))
                }
                _ => Ok(()),
            };
        }
        let mode = std::fs::metadata(&full)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        write_atomic(&full, format!("{}\n", lines.join("\n")).as_bytes(), mode)
    }
    async fn probe(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Option<Probe>, ProviderError> {
        let full = ctx.path(&path_input(req)?);
        let line = get_str(req.inputs, "line").unwrap_or_default();
        match std::fs::read_to_string(&full) {
            Ok(s) if s.lines().any(|l| l == line) => Ok(Some(Probe::Done(Attrs::from([
                ("path".to_string(), Value::from(path_input(req)?)),
                ("line".to_string(), Value::from(line)),
            ])))),
            Ok(_) => Ok(Some(Probe::NotDone)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Probe::NotDone)),
            Err(e) => Err(io_err("read", &full, e)),
        }
    }
}

/// Reads a file the plan does not own.
#[derive(Debug, Clone)]
pub struct ReadFile {
    path: Value,
}

impl ReadFile {
    pub fn at(path: impl Into<Output<String>>) -> Self {
        ReadFile {
            path: path.into().into(),
        }
    }
}

impl Declare for ReadFile {
    const TYPE: &'static str = "local_file.read";
    const KIND: NodeKind = NodeKind::Data;
    fn inputs(self) -> Attrs {
        Attrs::from([("path".to_string(), self.path)])
    }
}

crate::outputs!(ReadFile {
    content: String = "content",
});

struct ReadType;

#[async_trait]
impl DataType for ReadType {
    fn type_name(&self) -> &'static str {
        "local_file.read"
    }
    fn service(&self) -> &'static str {
        "local_file"
    }
    async fn read(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let full = ctx.path(&path_input(req)?);
        let content = std::fs::read_to_string(&full).map_err(|e| {
            ProviderError::with_fix(
                format!("read {}: {e}", full.display()),
                "data nodes read objects the plan does not own: create the file first",
            )
        })?;
        Ok(Attrs::from([
            ("content".to_string(), Value::from(content)),
            ("path".to_string(), Value::from(full.display().to_string())),
        ]))
    }
}
