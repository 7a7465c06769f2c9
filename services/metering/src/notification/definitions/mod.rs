//! Meter definitions in Ceilometer's `meters.yaml` format, loaded as Ceilometer's
//! `ProcessMeterNotifications` loads them, and the samples they make of a notification.
//!
//! **Loading.** Sources are files or directories (every `*.yaml` in it, in sorted order), read
//! in the order given; YAML anchors, aliases and `<<` merge keys apply. Each file's `metric:`
//! list is walked from the end, so within a file the *last* definition of a name wins; across
//! files the *first* file that defines a name wins (as `/etc/ceilometer/meters.d` overrides the
//! package's file). A definition that cannot work is reported by name with the reason
//! ([`Problem`]) and the others load; a file that cannot be read or is not YAML with a
//! `metric:` list fails the whole load ([`LoadError`]), so a reload keeps what it had.
//!
//! **Evaluation** ([`DefinitionSet::evaluate`]) against the notification's root object
//! `{ctxt, publisher_id, event_type, payload, metadata: {message_id, timestamp}}`, every
//! definition whose `event_type` regexes match, in Ceilometer's emission order (the reverse of
//! the files'). See `meter` for the single and `lookup` forms, `sample` for the rules that turn
//! values into samples.
//!
//! [`MeterDefinitions`] is the reloadable handle an agent reads a snapshot from per batch, and
//! that SIGHUP reloads ([`MeterDefinitions::reload`]).

mod getter;
mod meter;
mod sample;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde_json::{Map, Value};

use self::meter::{shown, EventTypePatterns, Fallback, MeterDefinition};
pub(crate) use self::sample::check_volume;
use self::sample::Origin;
pub use self::sample::{Fatal, Finished, MeterSample};
use super::jsonpath::EvalError;

/// tidings' own definitions of the common meters, used when no source is given.
pub const BUILTIN: &str = include_str!("../meters.yaml");
/// How [`BUILTIN`] is named in reports.
pub const BUILTIN_NAME: &str = "(built-in meters.yaml)";

/// The largest definitions file read.
pub const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;

/// Event types whose matching definitions are remembered; the memory is cleared when full.
const EVENT_TYPE_CACHE: usize = 4096;

/// Why definitions could not be loaded at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A source could not be read.
    #[error("cannot read meter definitions {path}: {source}")]
    Read {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not YAML, or has no `metric:` list.
    #[error("meter definitions {path} are not valid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// A definition that was not loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file it is in.
    pub file: String,
    /// Its `name` as written.
    pub definition: String,
    /// `rejected` (it cannot work) or `duplicate` (a definition of the same name won).
    pub kind: &'static str,
    /// Why.
    pub reason: String,
}

/// Ceilometer's `reserved_metadata_*` options: which keys of a `user_metadata` mapping become
/// the sample's `metadata.user_metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserMetadataRules {
    /// Prefixes kept, stripped, with `.` turned into `_` (default `metering.`).
    pub namespaces: Vec<String>,
    /// Whole keys kept too (default none).
    pub keys: Vec<String>,
    /// Longest string value kept, in characters (default 256).
    pub max_length: usize,
}

impl Default for UserMetadataRules {
    fn default() -> Self {
        Self {
            namespaces: vec!["metering.".to_owned()],
            keys: Vec::new(),
            max_length: 256,
        }
    }
}

impl UserMetadataRules {
    /// Ceilometer's `add_reserved_user_metadata`: a key already in `metadata` is not
    /// overwritten; nothing is added when nothing is kept.
    pub(crate) fn add(&self, source: &Map<String, Value>, metadata: &mut Map<String, Value>) {
        let cut = |v: &Value| match v {
            Value::String(s) if s.chars().count() > self.max_length => {
                Value::String(s.chars().take(self.max_length).collect())
            }
            other => other.clone(),
        };
        let mut kept = Map::new();
        for prefix in &self.namespaces {
            for (key, value) in source {
                if let Some(rest) = key.strip_prefix(prefix.as_str()) {
                    let name = rest.replace('.', "_");
                    if !metadata.contains_key(&name) {
                        kept.insert(name, cut(value));
                    }
                }
            }
        }
        for wanted in &self.keys {
            if let Some(value) = source.get(wanted) {
                let name = wanted.replace('.', "_");
                if !metadata.contains_key(&name) {
                    kept.insert(name, cut(value));
                }
            }
        }
        if !kept.is_empty() {
            metadata.insert("user_metadata".to_owned(), Value::Object(kept));
        }
    }
}

/// How samples are finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleOptions {
    /// `[DEFAULT] sample_source` (default `openstack`).
    pub source: String,
    /// The `user_metadata` rules.
    pub user_metadata: UserMetadataRules,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            source: "openstack".to_owned(),
            user_metadata: UserMetadataRules::default(),
        }
    }
}

/// What one definition made of a notification.
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionOutcome {
    /// The definition's `name` as written.
    pub definition: String,
    /// Its samples and drops, or why the notification is fatal (Ceilometer would raise).
    pub result: Result<Vec<Finished>, Fatal>,
}

/// Where definitions come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// [`BUILTIN`].
    Builtin,
    /// A file, or a directory of `*.yaml` files.
    Path(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builtin => f.write_str(BUILTIN_NAME),
            Source::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Loaded definitions.
#[derive(Debug)]
pub struct DefinitionSet {
    definitions: Vec<MeterDefinition>,
    problems: Vec<Problem>,
    files: Vec<String>,
    fallback: Fallback,
    by_event_type: Mutex<HashMap<String, Arc<[usize]>>>,
}

impl DefinitionSet {
    /// Loads `sources` in order ([`Source::Builtin`] alone when empty).
    pub fn load(sources: &[Source]) -> Result<Self, LoadError> {
        let builtin = [Source::Builtin];
        let sources = if sources.is_empty() {
            &builtin[..]
        } else {
            sources
        };
        let mut files: Vec<(String, String)> = Vec::new();
        for source in sources {
            match source {
                Source::Builtin => files.push((BUILTIN_NAME.to_owned(), BUILTIN.to_owned())),
                Source::Path(path) => {
                    for file in yaml_files(path)? {
                        let text = read_limited(&file)?;
                        files.push((file.display().to_string(), text));
                    }
                }
            }
        }
        let parsed = files
            .iter()
            .map(|(name, text)| parse_file(name, text).map(|list| (name.as_str(), list)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::compile(parsed))
    }

    /// Loads one YAML text (for tests and `check-definitions`).
    pub fn from_yaml(name: &str, text: &str) -> Result<Self, LoadError> {
        Ok(Self::compile(vec![(name, parse_file(name, text)?)]))
    }

    fn compile(files: Vec<(&str, Vec<Value>)>) -> Self {
        let mut definitions = Vec::new();
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        let mut patterns = EventTypePatterns::default();
        for (file, list) in &files {
            for config in list.iter().rev() {
                let name = shown(config.get("name").unwrap_or(&Value::Null));
                if names.contains(&name) {
                    problems.push(Problem {
                        file: (*file).to_owned(),
                        definition: name,
                        kind: "duplicate",
                        reason: "a later definition of this name in the file, or one in an earlier file, wins".to_owned(),
                    });
                    continue;
                }
                match MeterDefinition::new(config, &mut patterns) {
                    Ok(definition) => {
                        names.insert(name);
                        definitions.push(definition);
                    }
                    Err(reason) => problems.push(Problem {
                        file: (*file).to_owned(),
                        definition: name,
                        kind: "rejected",
                        reason,
                    }),
                }
            }
        }
        Self {
            definitions,
            problems,
            files: files.iter().map(|(f, _)| (*f).to_owned()).collect(),
            fallback: Fallback::new(),
            by_event_type: Mutex::new(HashMap::new()),
        }
    }

    /// How many definitions loaded.
    pub fn len(&self) -> usize {
        self.definitions.len()
    }

    /// Whether none loaded.
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }

    /// The loaded definitions' names, in emission order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.definitions.iter().map(|d| d.name.as_str())
    }

    /// The definitions not loaded, and why.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The files read, in order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The indices of the definitions that match `event_type`, remembered per event type.
    fn matching(&self, event_type: &str) -> Arc<[usize]> {
        let found = || -> Arc<[usize]> {
            self.definitions
                .iter()
                .enumerate()
                .filter(|(_, d)| d.matches(event_type))
                .map(|(i, _)| i)
                .collect()
        };
        let Ok(mut cache) = self.by_event_type.lock() else {
            return found();
        };
        if let Some(hit) = cache.get(event_type) {
            return hit.clone();
        }
        if cache.len() >= EVENT_TYPE_CACHE {
            cache.clear();
        }
        let indices = found();
        cache.insert(event_type.to_owned(), indices.clone());
        indices
    }

    /// Whether any definition matches `event_type`.
    pub fn any_match(&self, event_type: &str) -> bool {
        !self.matching(event_type).is_empty()
    }

    /// What each matching definition makes of the notification `root` (see [`root`]); an
    /// evaluation cut short (a hostile notification) is an error for the whole notification.
    pub fn evaluate(
        &self,
        root: &Value,
        options: &SampleOptions,
    ) -> Result<Vec<DefinitionOutcome>, EvalError> {
        let text = |key: &str| root.get(key).and_then(Value::as_str).unwrap_or("");
        let event_type = text("event_type");
        let origin = Origin {
            payload: root.get("payload").unwrap_or(&Value::Null),
            event_type,
            publisher_id: text("publisher_id"),
            timestamp: root
                .get("metadata")
                .and_then(|m| m.get("timestamp"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        };
        let mut outcomes = Vec::new();
        let mut memo = getter::Memo::new();
        for &index in self.matching(event_type).iter() {
            let definition = &self.definitions[index];
            let drafts =
                definition.drafts(root, &self.fallback, &options.user_metadata, &mut memo)?;
            let result = match drafts {
                Err(mismatch) => Ok(vec![Finished::Dropped {
                    kind: "lookup_mismatch",
                    reason: mismatch,
                }]),
                Ok(drafts) => drafts
                    .into_iter()
                    .map(|d| d.finish(origin, &options.source))
                    .collect(),
            };
            outcomes.push(DefinitionOutcome {
                definition: definition.name.clone(),
                result,
            });
        }
        Ok(outcomes)
    }
}

/// The root object meter definitions are evaluated against, as Ceilometer's dispatcher builds
/// it: `{ctxt, publisher_id, event_type, payload, metadata: {message_id, timestamp}}`, the
/// context with `client_timeout: null` added as oslo.messaging adds it.
pub fn root(
    mut context: Map<String, Value>,
    publisher_id: String,
    event_type: String,
    payload: Value,
    message_id: String,
    timestamp: String,
) -> Value {
    context.entry("client_timeout").or_insert(Value::Null);
    let mut metadata = Map::new();
    metadata.insert("message_id".into(), Value::String(message_id));
    metadata.insert("timestamp".into(), Value::String(timestamp));
    let mut root = Map::new();
    root.insert("ctxt".into(), Value::Object(context));
    root.insert("publisher_id".into(), Value::String(publisher_id));
    root.insert("event_type".into(), Value::String(event_type));
    root.insert("payload".into(), payload);
    root.insert("metadata".into(), Value::Object(metadata));
    Value::Object(root)
}

/// The `*.yaml` files of a directory in sorted order, or the file itself.
fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read = |source| LoadError::Read {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && p.is_file())
        .collect();
    files.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(files)
}

fn read_limited(path: &Path) -> Result<String, LoadError> {
    let read = |source| LoadError::Read {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_FILE_LEN {
        return Err(LoadError::Invalid {
            path: path.display().to_string(),
            reason: format!("larger than {MAX_FILE_LEN} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

/// The `metric:` list of a file, merge keys applied.
fn parse_file(name: &str, text: &str) -> Result<Vec<Value>, LoadError> {
    let invalid = |reason: String| LoadError::Invalid {
        path: name.to_owned(),
        reason,
    };
    let yaml: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let value = json_of(yaml).map_err(invalid)?;
    match value.get("metric") {
        Some(Value::Array(list)) => Ok(list.clone()),
        _ => Err(invalid("no `metric:` list".to_owned())),
    }
}

/// A YAML value as JSON, `<<` merge keys applied as PyYAML applies them (a mapping or a list
/// of mappings, each merged with its own merges first; the mapping's own keys win, then the
/// earlier merged mapping): scalar keys become strings; tags are refused (`yaml.safe_load`
/// refuses the ones that matter).
fn json_of(value: yaml_serde::Value) -> Result<Value, String> {
    use yaml_serde::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            Value::Array(items.into_iter().map(json_of).collect::<Result<_, _>>()?)
        }
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            let mut merges = Vec::new();
            for (key, value) in mapping {
                if key.as_str() == Some("<<") {
                    match json_of(value)? {
                        Value::Object(merged) => merges.push(merged),
                        Value::Array(list) => {
                            for item in list {
                                match item {
                                    Value::Object(merged) => merges.push(merged),
                                    _ => {
                                        return Err(
                                            "a `<<` list holds something else than mappings"
                                                .to_owned(),
                                        )
                                    }
                                }
                            }
                        }
                        _ => return Err("`<<` merges something else than a mapping".to_owned()),
                    }
                    continue;
                }
                let key = match key {
                    Y::String(s) => s,
                    Y::Bool(b) => if b { "True" } else { "False" }.to_owned(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "None".to_owned(),
                    other => return Err(format!("a mapping key {other:?} is not a scalar")),
                };
                map.insert(key, json_of(value)?);
            }
            for merged in merges {
                for (key, value) in merged {
                    map.entry(key).or_insert(value);
                }
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => return Err(format!("YAML tag {} is not supported", tagged.tag)),
    })
}

/// The reloadable definitions of a running agent: a snapshot per batch, a new set per reload.
#[derive(Clone, Debug)]
pub struct MeterDefinitions {
    sources: Arc<Vec<Source>>,
    current: Arc<RwLock<Option<Arc<DefinitionSet>>>>,
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Definitions loaded.
    pub loaded: usize,
    /// Definitions not loaded.
    pub problems: Vec<Problem>,
    /// Files read.
    pub files: Vec<String>,
}

impl MeterDefinitions {
    /// Definitions from `sources` (the built-in file when empty), not read yet.
    pub fn new(sources: Vec<Source>) -> Self {
        Self {
            sources: Arc::new(sources),
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// Definitions already loaded (for tests and benchmarks).
    pub fn fixed(set: DefinitionSet) -> Self {
        Self {
            sources: Arc::new(Vec::new()),
            current: Arc::new(RwLock::new(Some(Arc::new(set)))),
        }
    }

    /// The sources.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Reads the sources again and, when they load, makes them current; on an error the
    /// current definitions stay. This is what SIGHUP calls.
    pub fn reload(&self) -> Result<ReloadReport, LoadError> {
        let set = DefinitionSet::load(&self.sources)?;
        let report = ReloadReport {
            loaded: set.len(),
            problems: set.problems().to_vec(),
            files: set.files().to_vec(),
        };
        for problem in &report.problems {
            if problem.kind == "rejected" {
                tracing::warn!(file = %problem.file, definition = %problem.definition, reason = %problem.reason, "meter definition not loaded");
            } else {
                tracing::info!(file = %problem.file, definition = %problem.definition, "duplicate meter definition skipped");
            }
        }
        tracing::info!(
            definitions = report.loaded,
            files = report.files.len(),
            "meter definitions loaded"
        );
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(set));
        }
        Ok(report)
    }

    /// The current definitions, loading them first if they never were.
    pub fn snapshot(&self) -> Result<Arc<DefinitionSet>, LoadError> {
        if let Some(set) = self.current.read().ok().and_then(|c| c.clone()) {
            return Ok(set);
        }
        self.reload()?;
        Ok(self
            .current
            .read()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_else(|| Arc::new(DefinitionSet::compile(Vec::new()))))
    }
}

#[cfg(test)]
mod tests;
