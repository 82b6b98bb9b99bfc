//! Reading rule files and directories into a rule set.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::compile::{Compiled, compile};
use super::diag::{Diagnostic, Pos, RuleErrors, SourceText};
use super::model::{
    Action, At, EnrichDef, Hook, ProbeDef, RecorderDef, RuleDef, RuleSetDef, StateDef,
};
use super::parse::parse_file;
use super::slots::SlotTable;

/// Loads every `*.toml` file directly in `dir`, in file name order (names starting with `.` are
/// skipped, as a shell glob would). A missing or unreadable directory is a diagnostic at line 1,
/// column 1 of `dir`. See [`load_files`].
pub fn load_dir(dir: &Path) -> Result<RuleSetDef, Vec<Diagnostic>> {
    load_dir_and(dir, &[])
}

/// [`load_dir`], then the files of `extra` (in memory, `(label, text)`) after the directory's:
/// the rule set of a rules directory and the remote files an OpAMP server gave.
pub fn load_dir_and(
    dir: &Path,
    extra: &[(PathBuf, String)],
) -> Result<RuleSetDef, Vec<Diagnostic>> {
    let paths = rule_files(dir).map_err(|d| vec![d])?;
    let mut loader = Loader::default();
    loader.add_files(&paths);
    for (label, text) in extra {
        loader.add(label, text);
    }
    loader.finish()
}

/// Loads the rule files `paths`, in that order. Every problem in every file is reported (I/O
/// errors included); the rule set is returned only when there are none.
///
/// This checks each rule on its own and the uniqueness of names across the set; the kernel's
/// limits are checked by [`compile`](super::compile).
pub fn load_files(paths: &[PathBuf]) -> Result<RuleSetDef, Vec<Diagnostic>> {
    let mut loader = Loader::default();
    loader.add_files(paths);
    loader.finish()
}

/// Like [`load_files`], for file contents already in memory: `(path, text)` in rule set order.
/// The paths are only used to label rules and diagnostics.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<RuleSetDef, Vec<Diagnostic>> {
    let mut loader = Loader::default();
    for (path, text) in sources {
        loader.add(path, text);
    }
    loader.finish()
}

/// Compiles every rule file of a directory, then the in-memory files of `extra` (see
/// [`load_dir_and`]), or fails with [`RuleErrors`].
pub fn compile_dir(
    dir: &Path,
    extra: &[(PathBuf, String)],
    slots: &mut SlotTable,
) -> anyhow::Result<Compiled> {
    compile_dir_sources(dir, extra, slots).map(|(c, _)| c)
}

/// [`compile_dir`], with the files it compiled as it read them (path or label, text), in order:
/// what the agent started with, whatever the directory holds by the time it looks again.
pub fn compile_dir_sources(
    dir: &Path,
    extra: &[(PathBuf, String)],
    slots: &mut SlotTable,
) -> anyhow::Result<(Compiled, Vec<(PathBuf, String)>)> {
    let paths = rule_files(dir).map_err(|d| RuleErrors(vec![d]))?;
    let mut loader = Loader::default();
    loader.add_files(&paths);
    for (label, text) in extra {
        loader.add(label, text);
    }
    let sources = loader.texts.clone();
    Ok(load_and_compile(loader, slots).map(|(_, c)| (c, sources))?)
}

/// Everything `dt-agent check` verifies: loads `paths` and compiles them (with a fresh
/// [`SlotTable`]), so the kernel's size and count limits are checked too.
pub fn check_files(paths: &[PathBuf]) -> Result<RuleSetDef, Vec<Diagnostic>> {
    let mut loader = Loader::default();
    loader.add_files(paths);
    load_and_compile(loader, &mut SlotTable::default())
        .map(|(d, _)| d)
        .map_err(|e| e.0)
}

/// Finishes `loader` and compiles what it read (see [`Loader::finish`]); compile's problems
/// come sorted as the loader's do. `slots` changes only on success.
fn load_and_compile(
    loader: Loader,
    slots: &mut SlotTable,
) -> Result<(RuleSetDef, Compiled), RuleErrors> {
    let order = loader.order.clone();
    let defs = loader.finish().map_err(RuleErrors)?;
    match compile(&defs, slots) {
        Ok(compiled) => Ok((defs, compiled)),
        Err(mut diags) => {
            sort_diags(&mut diags, &order);
            Err(RuleErrors(diags))
        }
    }
}

/// Sorts problems by file (in rule set order, `order`) and then position.
fn sort_diags(diags: &mut [Diagnostic], order: &[PathBuf]) {
    let rank = |d: &Diagnostic| {
        order
            .iter()
            .position(|p| *p == d.file)
            .unwrap_or(usize::MAX)
    };
    diags.sort_by_key(|d| (rank(d), d.pos()));
}

/// The rule files of `dir`: the `*.toml` files directly in it whose names do not start with `.`
/// (as a shell glob would skip them; `push` writes its temporary files so), sorted by file name.
/// The one listing of a rules directory: `run`, `push`, the watcher and `check` use it.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let unreadable = |e: std::io::Error| {
        Diagnostic::new(
            dir,
            Pos::START,
            format!("cannot read rules directory (`rules_dir` in the config, or --rules): {e}"),
        )
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if is_rule_file_name(&path) && !path.is_dir() {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(paths)
}

/// The names pushed files take in the rules directory, in order: the error names the first
/// path that cannot be a rule file there (its name does not end in `.toml`, or starts with a
/// dot: the directory's listing would skip it), or that has the name of an earlier one (the
/// directory keeps one file of a name).
pub fn pushed_names<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Result<Vec<String>, String> {
    let mut names: Vec<(String, &Path)> = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .and_then(OsStr::to_str)
            .filter(|_| is_rule_file_name(path))
            .ok_or_else(|| {
                format!(
                    "{}: a rule file's name must end in .toml and not start with a dot (the \
                     rules directory holds only such files)",
                    path.display()
                )
            })?;
        if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
            return Err(format!(
                "{}: {} is pushed too, with the same file name; the rules directory keeps one \
                 file of a name",
                path.display(),
                first.display()
            ));
        }
        names.push((name.to_string(), path));
    }
    Ok(names.into_iter().map(|(n, _)| n).collect())
}

fn is_rule_file_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(OsStr::to_str) else {
        return false;
    };
    !name.starts_with('.') && path.extension() == Some(OsStr::new("toml"))
}

/// The text of a rule file; a file that cannot be read, or is not UTF-8, is a diagnostic (for
/// bytes that are not UTF-8, at the first of them).
fn read_rule_file(path: &Path) -> Result<String, Diagnostic> {
    read_text(path, "rule file", "a rule file")
}

/// The text of the file at `path`, `what` (`"rule file"`) and `a_what` (`"a rule file"`) naming
/// it in its diagnostics: one that cannot be read, or is not UTF-8 (at the first byte that is
/// not).
pub(crate) fn read_text(path: &Path, what: &str, a_what: &str) -> Result<String, Diagnostic> {
    let bytes = std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            std::io::ErrorKind::IsADirectory => "a directory, not a file".to_string(),
            _ => e.to_string(),
        };
        Diagnostic::new(path, Pos::START, format!("cannot read {what}: {why}"))
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        // The valid text before the bad byte gives its line and column.
        let before = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let pos = SourceText::new(path, before).pos(good);
        Diagnostic::new(
            path,
            pos,
            format!(
                "byte 0x{:02X} is not UTF-8: {a_what} is UTF-8 text (save it so)",
                bytes[good]
            ),
        )
    })
}

/// For a name defined in two files on disk: the same file given twice (`./rules/a.toml` and
/// `rules/a.toml`), or two files of the same file name (an edited copy checked beside the
/// directory it comes from), where in the rules directory one would replace the other. Not
/// for sources that are not files here (an OpAMP server's, which are added beside the
/// directory's, not in place of them).
fn same_file_name(first: &Path, second: &Path) -> String {
    if !first.is_file() || !second.is_file() {
        return String::new();
    }
    let (Ok(a), Ok(b)) = (first.canonicalize(), second.canonicalize()) else {
        return String::new();
    };
    if a == b {
        return " (the same file, given twice)".to_string();
    }
    match (first.file_name(), second.file_name()) {
        (Some(a), Some(b)) if a == b => format!(
            " (both files are named {}: in a rules directory the new one takes the old one's \
             place, as `push` does; check the directory with it in place)",
            b.to_string_lossy()
        ),
        _ => String::new(),
    }
}

/// "no [[kind]] named ...", with the set's name it likely meant (within two edits), if any.
fn missing(kind: &str, name: &str, known: &[&str]) -> String {
    match crate::rules::diag::closest(name, known) {
        Some(meant) => {
            format!("no [[{kind}]] named \"{name}\" in the rule set; did you mean \"{meant}\"?")
        }
        None => format!("no [[{kind}]] named \"{name}\" in the rule set"),
    }
}

/// Whether the `kind` table named `name` is among the refused ones.
fn refused(broken: &[(&'static str, String)], kind: &str, name: &str) -> bool {
    broken.iter().any(|(k, n)| *k == kind && n == name)
}

/// Accumulates the rules and diagnostics of a rule set, file by file.
#[derive(Default)]
struct Loader {
    rules: Vec<RuleDef>,
    probes: Vec<ProbeDef>,
    recorders: Vec<RecorderDef>,
    states: Vec<StateDef>,
    enrich: Option<EnrichDef>,
    /// Probes, recorders and states that were refused, as (kind, name): rules naming them are
    /// not reported again, as if they were missing.
    broken: Vec<(&'static str, String)>,
    /// The recorders and states that refused rules name, and their files: checked as a valid
    /// rule's are.
    refused_refs: Vec<(PathBuf, &'static str, At<String>)>,
    diags: Vec<Diagnostic>,
    /// Where each rule name was first defined (file, line).
    names: HashMap<String, (PathBuf, usize)>,
    /// The files, in the order added.
    order: Vec<PathBuf>,
    /// The files read, with their texts, in the order added.
    texts: Vec<(PathBuf, String)>,
}

impl Loader {
    /// Reads and adds each file; one that cannot be read is a diagnostic.
    fn add_files(&mut self, paths: &[PathBuf]) {
        for path in paths {
            match read_rule_file(path) {
                Ok(text) => self.add(path, &text),
                Err(d) => {
                    self.order.push(path.clone());
                    self.fail(d)
                }
            }
        }
    }

    fn add(&mut self, path: &Path, text: &str) {
        self.order.push(path.to_path_buf());
        self.texts.push((path.to_path_buf(), text.to_string()));
        let src = SourceText::new(path, text);
        let parsed = parse_file(&src);
        let (rules, probes, mut diags) = (parsed.rules, parsed.probes, parsed.diags);
        for r in parsed.recorders {
            match self.recorders.iter().find(|o| o.name.value == r.name.value) {
                Some(first) => diags.push(duplicate(
                    path,
                    "recorder",
                    &r.name,
                    first.file.as_path(),
                    first.name.pos.line,
                )),
                None => self.recorders.push(r),
            }
        }
        for st in parsed.states {
            match self.states.iter().find(|o| o.name.value == st.name.value) {
                Some(first) => diags.push(duplicate(
                    path,
                    "state",
                    &st.name,
                    first.file.as_path(),
                    first.name.pos.line,
                )),
                None => self.states.push(st),
            }
        }
        if let Some(e) = parsed.enrich {
            match &self.enrich {
                Some(first) => diags.push(Diagnostic::new(
                    path,
                    e.pos,
                    format!(
                        "a rule set has at most one [enrich]: the first is at {}:{}",
                        first.file.display(),
                        first.pos.line
                    ),
                )),
                None => self.enrich = Some(e),
            }
        }
        self.broken.extend(parsed.broken);
        let file = path.to_path_buf();
        let refs = parsed.refused_refs.into_iter();
        self.refused_refs
            .extend(refs.map(|(kind, name)| (file.clone(), kind, name)));
        // Valid and refused rules in the file's order: a name given twice is reported whether
        // the first was refused or not.
        let mut named: Vec<(At<String>, Option<RuleDef>)> = rules
            .into_iter()
            .map(|r| (r.name.clone(), Some(r)))
            .chain(parsed.refused_rules.into_iter().map(|n| (n, None)))
            .collect();
        named.sort_by_key(|(n, _)| n.pos);
        for (name, rule) in named {
            match self.names.get(&name.value) {
                Some((file, line)) => diags.push(Diagnostic::new(
                    path,
                    name.pos,
                    format!(
                        "duplicate rule name \"{}\": first defined at {}:{line}{}",
                        name.value,
                        file.display(),
                        same_file_name(file, path)
                    ),
                )),
                None => {
                    let first = (path.to_path_buf(), name.pos.line);
                    self.names.insert(name.value, first);
                    self.rules.extend(rule);
                }
            }
        }
        for probe in probes {
            match self
                .probes
                .iter()
                .find(|p| p.name.value == probe.name.value)
            {
                Some(first) => diags.push(Diagnostic::new(
                    path,
                    probe.name.pos,
                    format!(
                        "duplicate probe name \"{}\": first defined at {}:{}{}",
                        probe.name.value,
                        first.file.display(),
                        first.name.pos.line,
                        same_file_name(&first.file, path)
                    ),
                )),
                None => self.probes.push(probe),
            }
        }
        diags.sort_by_key(Diagnostic::pos);
        self.diags.extend(diags);
    }

    fn fail(&mut self, diag: Diagnostic) {
        self.diags.push(diag);
    }

    /// Gives each rule the `[[probe]]`s its uprobe hooks name (from any file of the set).
    fn link_probes(&mut self) {
        for rule in &mut self.rules {
            for (hook, pos) in rule.hooks.iter().zip(&rule.hook_pos) {
                let Hook::Uprobe(name) = hook else {
                    continue;
                };
                match self.probes.iter().find(|p| &p.name.value == name) {
                    Some(probe) => rule.probes.push(probe.clone()),
                    None if refused(&self.broken, "probe", name) => {}
                    None => {
                        let known: Vec<&str> =
                            self.probes.iter().map(|p| p.name.value.as_str()).collect();
                        self.diags.push(Diagnostic::new(
                            &rule.file,
                            *pos,
                            missing("probe", name, &known),
                        ))
                    }
                }
            }
        }
    }

    /// Checks that every recorder and state the rules name is in the set.
    fn link_objects(&mut self) {
        let mut diags = Vec::new();
        // The names of the set's recorders or states.
        let known = |kind: &str| -> Vec<&str> {
            match kind {
                "recorder" => self
                    .recorders
                    .iter()
                    .map(|r| r.name.value.as_str())
                    .collect(),
                _ => self.states.iter().map(|s| s.name.value.as_str()).collect(),
            }
        };
        for rule in &self.rules {
            // A refused one was reported where it is.
            let recorder_known = |n: &At<String>| {
                self.recorders.iter().any(|r| r.name.value == n.value)
                    || refused(&self.broken, "recorder", &n.value)
            };
            let state_known = |n: &At<String>| {
                self.states.iter().any(|s| s.name.value == n.value)
                    || refused(&self.broken, "state", &n.value)
            };
            let mut missing = |kind: &str, n: &At<String>| {
                diags.push(Diagnostic::new(
                    &rule.file,
                    n.pos,
                    missing(kind, &n.value, &known(kind)),
                ))
            };
            if let Some(r) = &rule.recorder
                && !recorder_known(r)
            {
                missing("recorder", r);
            }
            if let Some((s, _)) = &rule.conditions.state
                && !state_known(s)
            {
                missing("state", s);
            }
            if let Action::Trigger(t) = &rule.action.value {
                for r in t.flush.iter().filter(|r| !recorder_known(r)) {
                    missing("recorder", r);
                }
                for s in t.set_state.iter().filter(|s| !state_known(s)) {
                    missing("state", s);
                }
            }
        }
        for (file, kind, n) in &self.refused_refs {
            let names = known(kind);
            if !names.contains(&n.value.as_str()) && !refused(&self.broken, kind, &n.value) {
                diags.push(Diagnostic::new(
                    file,
                    n.pos,
                    missing(kind, &n.value, &names),
                ));
            }
        }
        self.diags.extend(diags);
    }

    /// The rule set, or every problem found, sorted by file and position. With problems, the
    /// rules that read well are compiled too (with fresh slots), so that the kernel's limits
    /// they break are reported in the same run rather than after the other problems are fixed.
    fn finish(mut self) -> Result<RuleSetDef, Vec<Diagnostic>> {
        self.link_probes();
        self.link_objects();
        let defs = RuleSetDef {
            rules: self.rules,
            recorders: self.recorders,
            states: self.states,
            enrich: self.enrich,
        };
        if self.diags.is_empty() {
            return Ok(defs);
        }
        let mut diags = self.diags;
        if let Err(more) = compile(&defs, &mut SlotTable::default()) {
            for d in more {
                if !diags.contains(&d) {
                    diags.push(d);
                }
            }
        }
        sort_diags(&mut diags, &self.order);
        Err(diags)
    }
}

fn duplicate(path: &Path, kind: &str, name: &At<String>, file: &Path, line: usize) -> Diagnostic {
    Diagnostic::new(
        path,
        name.pos,
        format!(
            "duplicate {kind} name \"{}\": first defined at {}:{line}{}",
            name.value,
            file.display(),
            same_file_name(file, path)
        ),
    )
}
