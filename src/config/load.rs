//! Reading a config: defaults, then the file, then `--set` overrides, each value
//! remembering where it came from (`dfengine train --dry-run` prints that).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use toml::{Table, Value};

use super::error::ConfigError;
use super::schema::Config;
use super::validate::validate;

/// `table.key=value` from the command line. The value is read as TOML when it parses
/// (`8`, `true`, `0.5`, `"x"`) and as a bare string otherwise (`resnet18`, `12GiB`).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
    pub text: String,
}

impl FromStr for Override {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = |problem: &str| ConfigError::Override { text: text.into(), problem: problem.into() };
        let (key, raw) = text.split_once('=').ok_or_else(|| bad("expected table.key=value"))?;
        let path: Vec<String> = key.trim().split('.').map(|s| s.trim().to_string()).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(bad("expected table.key=value, e.g. dataloader.batch_size=8"));
        }
        let raw = raw.trim();
        let value = toml::from_str::<Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_string()));
        Ok(Override { path, value, text: text.to_string() })
    }
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Override(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Override(text) => write!(f, "--set {text}"),
        }
    }
}

/// A validated config and the origin of each value.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    pub config: Config,
    pub file: Option<PathBuf>,
    /// Dotted key → source, for keys set by the file or an override.
    origins: BTreeMap<String, Source>,
}

impl ResolvedConfig {
    pub fn source_of(&self, dotted_key: &str) -> Source {
        self.origins.get(dotted_key).cloned().unwrap_or(Source::Default)
    }

    /// The whole config as TOML, every leaf followed by a comment naming its source.
    pub fn annotated_toml(&self) -> String {
        let table = Table::try_from(&self.config).expect("the config schema serializes to TOML");
        let mut out = String::new();
        write_table(&mut out, &table, &mut Vec::new(), self);
        out
    }
}

fn write_table(out: &mut String, table: &Table, prefix: &mut Vec<String>, resolved: &ResolvedConfig) {
    let leaves: Vec<_> = table.iter().filter(|(_, v)| !v.is_table()).collect();
    if !leaves.is_empty() {
        if !prefix.is_empty() {
            out.push_str(&format!("\n[{}]\n", prefix.join(".")));
        }
        let width = leaves.iter().map(|(k, v)| k.len() + v.to_string().len()).max().unwrap_or(0) + 3;
        for (key, value) in leaves {
            prefix.push(key.clone());
            let line = format!("{key} = {value}");
            out.push_str(&format!("{line:<width$}  # {}\n", resolved.source_of(&prefix.join("."))));
            prefix.pop();
        }
    }
    for (key, value) in table.iter() {
        if let Value::Table(sub) = value {
            prefix.push(key.clone());
            write_table(out, sub, prefix, resolved);
            prefix.pop();
        }
    }
}

/// Loads `file` (or only the defaults when `None`), applies `overrides` in order, and
/// validates the result.
pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<ResolvedConfig, ConfigError> {
    let mut merged = Table::new();
    let mut origins = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        merged = toml::from_str::<Table>(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        collect_leaves(&merged, &mut Vec::new(), &mut |key| {
            origins.insert(key, Source::File(path.to_path_buf()));
        });
    }
    for o in overrides {
        set_path(&mut merged, o)?;
        origins.insert(o.path.join("."), Source::Override(o.text.clone()));
    }

    let origin_of = |dotted: &str| -> String {
        // An error inside a table with no leaf of its own (an unknown table) is reported
        // against whatever set something beneath it.
        let source = origins
            .get(dotted)
            .or_else(|| origins.iter().find(|(k, _)| k.starts_with(&format!("{dotted}."))).map(|(_, s)| s));
        match source {
            Some(Source::Override(text)) => format!("--set {text}"),
            Some(Source::File(path)) => path.display().to_string(),
            _ => file.map_or_else(|| "defaults".to_string(), |p| p.display().to_string()),
        }
    };

    let mut config: Config = serde_path_to_error::deserialize(Value::Table(merged.clone())).map_err(|e| {
        let path: Vec<String> = e.path().iter().map(|seg| seg.to_string()).collect();
        let problem = readable(e.inner().message());
        schema_error(&merged, path, problem, &origin_of)
    })?;

    validate(&config).map_err(|v| {
        let path: Vec<String> = v.key.split('.').map(str::to_string).collect();
        ConfigError::Invalid {
            origin: origin_of(v.key),
            location: location(&path, lookup(&merged, &path).or(v.value.as_ref())),
            problem: v.problem,
        }
    })?;

    // The face detector's weights travel with the config that names them: a relative path
    // written in a file is read from the file's folder, so the config works from any
    // working directory (a `--set` path is the command line's: the working directory).
    if let Some(Source::File(path)) = origins.get("data.face_detector") {
        config.data.face_detector = beside(path, &config.data.face_detector);
    }

    Ok(ResolvedConfig { config, file: file.map(Path::to_path_buf), origins })
}

/// `value` read from the folder of `file`, made absolute (a resolved config is saved into
/// run folders and read again from there).
fn beside(file: &Path, value: &str) -> String {
    let joined = file.parent().unwrap_or(Path::new("")).join(value);
    std::path::absolute(&joined).unwrap_or(joined).display().to_string()
}

/// serde names Rust types ("expected u32"); users wrote TOML.
fn readable(message: &str) -> String {
    message
        .trim()
        .replace("expected u32", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected f64", "expected a number")
}

/// Turns a serde error at `path` into a located, readable error. serde reports an
/// unknown key at the key's own path, and an unknown table the same way.
fn schema_error(
    merged: &Table,
    path: Vec<String>,
    problem: String,
    origin_of: &dyn Fn(&str) -> String,
) -> ConfigError {
    let problem = if problem.starts_with("unknown field") {
        let kind = if lookup(merged, &path).is_some_and(Value::is_table) { "table" } else { "key" };
        problem.replacen("unknown field", &format!("unknown {kind}"), 1)
    } else {
        problem
    };
    ConfigError::Invalid {
        origin: origin_of(&path.join(".")),
        location: location(&path, lookup(merged, &path)),
        problem,
    }
}

/// `[table] key = value`, `[table] key`, or `[table]` for a whole table.
fn location(path: &[String], value: Option<&Value>) -> String {
    match (path.split_last(), value) {
        (None, _) => "(top level)".to_string(),
        (Some(_), Some(Value::Table(_))) => format!("[{}]", path.join(".")),
        (Some((key, [])), Some(v)) => format!("{key} = {v}"),
        (Some((key, [])), None) => key.clone(),
        (Some((key, table)), Some(v)) => format!("[{}] {key} = {v}", table.join(".")),
        (Some((key, table)), None) => format!("[{}] {key}", table.join(".")),
    }
}

fn lookup<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(p)?.as_table()?;
    }
    t.get(last)
}

fn collect_leaves(table: &Table, prefix: &mut Vec<String>, sink: &mut dyn FnMut(String)) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            Value::Table(sub) => collect_leaves(sub, prefix, sink),
            _ => sink(prefix.join(".")),
        }
        prefix.pop();
    }
}

fn set_path(table: &mut Table, o: &Override) -> Result<(), ConfigError> {
    let (last, parents) = o.path.split_last().expect("an override has at least two parts");
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| Value::Table(Table::new()));
        t = entry.as_table_mut().ok_or_else(|| ConfigError::Override {
            text: o.text.clone(),
            problem: format!("`{p}` is a value, not a table"),
        })?;
    }
    t.insert(last.clone(), o.value.clone());
    Ok(())
}
