//! The shim's side of `farm why`: after a miss (never a hit) it leaves a record of
//! what keyed the compile ([`crate::why`]); and [`predict`] keys a command now,
//! without compiling it, for `farm why -- <compiler> <args>`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::config::{Config, Mode};
use crate::fsutil;
use crate::key::{self, BaseDirs, FieldSink, Manifest, RecordedFields};
use crate::lang::{self, Family, Invocation, Keying};
use crate::stats::ReasonFamily;
use crate::store::{CacheKey, EntryKind, LocalStore, Tier};
use crate::why::{self, short, Content, Outcome, Record};

/// The mode's name and its key class, as keys and records name them.
pub(super) fn mode_names(family: &dyn Family, mode: Mode) -> (&'static str, &'static str) {
    match (family.keying(), mode) {
        (Keying::Declared(_), _) => ("declared", "declared"),
        (Keying::Observed(_), Mode::Preprocessor) => ("preprocessor", "preprocessor"),
        (Keying::Observed(_), Mode::Direct) => ("direct", "direct"),
        (Keying::Observed(_), Mode::Depend) => ("depend", "direct"),
    }
}

fn argv_text(arg0: &OsString, args: &[OsString]) -> Vec<String> {
    std::iter::once(arg0)
        .chain(args)
        .take(why::MAX_FIELDS)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_default()
}

/// The compiler as a record names it, with its identity's facts (from the memo
/// written when the identity was computed).
fn compiler_facts(
    family: &dyn Family,
    compiler: &Path,
    identity: [u8; 32],
    memo: &Path,
) -> why::Compiler {
    let canonical = std::fs::canonicalize(compiler).unwrap_or_else(|_| compiler.to_path_buf());
    let probe = family.identity_probe(&canonical);
    why::Compiler {
        path: compiler.to_string_lossy().into_owned(),
        canonical: canonical.to_string_lossy().into_owned(),
        identity,
        facts: key::identity_facts(&canonical, &probe, memo),
    }
}

/// The base key's fields as `class` hashes them, labelled.
fn fields(
    family: &dyn Family,
    class: &str,
    identity: &[u8; 32],
    inv: &Invocation,
    base: &BaseDirs,
) -> RecordedFields {
    let scheme = key::KeyScheme {
        family: family.name(),
        env: family.key_env(),
    };
    let mut f = RecordedFields::default();
    if let Err(e) = key::base_fields(&mut f, class, scheme, identity, inv, base) {
        f.field("error", e.to_string().as_bytes());
    }
    f
}

impl Ctx<'_> {
    /// A record of this compile as keyed in `class`, ending in `outcome`.
    fn why_record(&self, class: &str, content: Content, outcome: Outcome) -> Record {
        let cwd = cwd();
        let source = why::absolute_source(&cwd, &self.inv.source);
        let (mode, _) = mode_names(self.family, self.cfg.mode.value);
        let mut r = Record::new(
            &source,
            &cwd,
            argv_text(&self.inv.arg0, &self.inv.args),
            mode,
            outcome,
        );
        let memo = self.cfg.dir.value.join("memo");
        r.compiler = compiler_facts(self.family, &self.inv.compiler, self.identity, &memo);
        r.set_fields(fields(
            self.family,
            class,
            &self.identity,
            &self.inv,
            &self.base,
        ));
        r.content = content;
        r.cap_content();
        r
    }

    /// After a miss ran and what it left was stored (`stored`: anything was): its
    /// record. Best effort.
    pub(super) fn note_miss(&self, class: &str, content: Content, stored: bool) {
        let outcome = if stored {
            Outcome::Stored
        } else {
            Outcome::NotStored(
                self.tally
                    .last_reason(ReasonFamily::NotStored)
                    .or_else(|| self.tally.last_reason(ReasonFamily::Passthrough))
                    .unwrap_or("nothing to store")
                    .to_string(),
            )
        };
        why::save(
            &self.cfg.dir.value,
            self.why_record(class, content, outcome),
        );
    }

    /// A compile that runs uncached: its record, naming the reason.
    pub(super) fn note_uncached(&self, reason: &str, detail: &str) {
        let (_, class) = mode_names(self.family, self.cfg.mode.value);
        let outcome = Outcome::Passthrough {
            reason: reason.to_string(),
            detail: detail.chars().take(500).collect(),
        };
        why::save(
            &self.cfg.dir.value,
            self.why_record(class, Content::default(), outcome),
        );
    }
}

/// File name endings of sources a pass-through that was never parsed may name.
const SOURCE_ENDINGS: &[&str] = &[
    ".c", ".cc", ".cpp", ".cxx", ".c++", ".C", ".m", ".mm", ".i", ".ii", ".s", ".S", ".sx",
    ".java", ".cs",
];

/// A pass-through decided before a source was known (`-E`, a link, an option farm
/// does not cache): a record for each (up to 4) argument that names an existing
/// source file. Best effort.
pub(super) fn note_passthrough(
    cfg: &Config,
    compiler: &Path,
    arg0: &OsString,
    args: &[OsString],
    reason: &str,
    detail: &str,
) {
    let cwd = cwd();
    let sources = args
        .iter()
        .map(Path::new)
        .filter(|p| {
            let s = p.to_string_lossy();
            !s.starts_with('-') && SOURCE_ENDINGS.iter().any(|e| s.ends_with(e))
        })
        .filter(|p| p.is_file())
        .take(4);
    for src in sources {
        let source = why::absolute_source(&cwd, src);
        let mut r = Record::new(
            &source,
            &cwd,
            argv_text(arg0, args),
            "none",
            Outcome::Passthrough {
                reason: reason.to_string(),
                detail: detail.chars().take(500).collect(),
            },
        );
        r.compiler.path = compiler.to_string_lossy().into_owned();
        why::save(&cfg.dir.value, r);
    }
}

/// A command keyed now, without compiling it.
pub struct Prediction {
    /// The source, absolute (none when the command has none farm knows).
    pub source: Option<PathBuf>,
    /// Its key inputs now (direct mode: the content part is the source only; the
    /// files read are checked against an earlier record's by [`why::probe`]).
    pub now: Option<Record>,
    /// It would hit the local cache: which entry.
    pub hit: Option<String>,
    /// It would not be cached at all: reason and detail.
    pub passthrough: Option<(String, String)>,
}

impl Prediction {
    fn passthrough(source: Option<PathBuf>, reason: &str, detail: &str) -> Prediction {
        Prediction {
            source,
            now: None,
            hit: None,
            passthrough: Some((reason.to_string(), detail.to_string())),
        }
    }
}

/// Keys the compile `compiler args` as the shim would now, in the configured mode,
/// and looks it up in the local cache (only: the shared tiers are not asked).
pub fn predict(
    cfg: &Config,
    compiler: &Path,
    canonical: &Path,
    arg0: OsString,
    args: Vec<OsString>,
) -> Result<Prediction, String> {
    let name = compiler
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(family) = lang::family_for(&name) else {
        return Ok(Prediction::passthrough(None, "unknown_compiler", &name));
    };
    for var in family.unsafe_env() {
        if std::env::var_os(var).is_some() {
            return Ok(Prediction::passthrough(None, "unsafe_environment", var));
        }
    }
    let inv = match family.parse(compiler, &arg0, &args, false) {
        Ok(inv) => inv,
        Err(p) => return Ok(Prediction::passthrough(None, p.reason, &p.detail)),
    };
    let cwd = cwd();
    let source = why::absolute_source(&cwd, &inv.source);
    let memo = cfg.dir.value.join("memo");
    let probe = family.identity_probe(canonical);
    let identity = key::compiler_identity(canonical, &probe, &memo)
        .map_err(|e| format!("cannot identify the compiler: {e}"))?;
    let base = BaseDirs::new(&cfg.base_dir.value);
    let (mut mode, mut class) = mode_names(family, cfg.mode.value);
    let local = LocalStore::new(&cfg.dir.value, cfg.max_size.value);
    let scheme = key::KeyScheme {
        family: family.name(),
        env: family.key_env(),
    };
    let hasher = |class: &str| {
        key::base_hasher(class, scheme, &identity, &inv, &base)
            .map_err(|e| format!("cannot key the compile: {e}"))
    };
    let have = |k: &CacheKey| local.have(EntryKind::Result, k).unwrap_or(false);
    let mut content = Content::default();
    let mut hit = None;
    match family.keying() {
        Keying::Observed(obs) => {
            if class == "direct" {
                let data = fsutil::read_file(&inv.source)
                    .map_err(|e| format!("cannot read the source {}: {e}", inv.source.display()))?;
                content.source = Some(short(blake3::hash(&data).as_bytes()));
                let mkey = key::finish(hasher("direct")?, "source", &data);
                let manifest = local
                    .get(EntryKind::Manifest, &mkey)
                    .ok()
                    .flatten()
                    .and_then(|d| Manifest::decode(&d))
                    .unwrap_or_default();
                if manifest.preprocessor_only.is_some() && mode == "direct" {
                    // This source is keyed by its preprocessed text (see below).
                    class = "preprocessor";
                    mode = "preprocessor";
                } else {
                    let mut memo = key::CheckMemo::default();
                    let n = manifest.entries.len();
                    for (i, e) in manifest.entries.iter().enumerate() {
                        if key::entry_matches(e, &mut memo, &base) && have(&e.result) {
                            hit = Some(format!(
                                "manifest entry {} of {n}, result {}",
                                i + 1,
                                fsutil::hex(&e.result.0[..8])
                            ));
                            break;
                        }
                    }
                }
            }
            if class == "preprocessor" {
                let text = match obs.preprocess(&inv) {
                    Ok(Ok(t)) => t,
                    Ok(Err(p)) => {
                        return Ok(Prediction::passthrough(Some(source), p.reason, &p.detail))
                    }
                    Err(e) => return Err(format!("cannot run the preprocessor: {e}")),
                };
                obs.cleanup(&inv);
                let k = key::finish(
                    hasher("preprocessor")?,
                    "preprocessed",
                    &base.line_markers(&text),
                );
                content.key = Some(short(&k.0));
                if have(&k) || (!base.is_empty() && have(&key::pinned(&k, &base))) {
                    hit = Some(format!("result {}", fsutil::hex(&k.0[..8])));
                }
            }
        }
        Keying::Declared(decl) => {
            let inputs = match decl.inputs(&inv, &memo) {
                Ok(i) => i,
                Err(p) => return Ok(Prediction::passthrough(Some(source), p.reason, &p.detail)),
            };
            let k = key::finish_declared(hasher("declared")?, &inputs.key, &base);
            content.declared = declared_content(&inputs.key, &base);
            if have(&k) || (!base.is_empty() && have(&key::pinned(&k, &base))) {
                hit = Some(format!("result {}", fsutil::hex(&k.0[..8])));
            }
        }
    }
    let mut now = Record::new(
        &source,
        &cwd,
        argv_text(&arg0, &args),
        mode,
        Outcome::Stored,
    );
    now.compiler = compiler_facts(family, compiler, identity, &memo);
    now.set_fields(fields(family, class, &identity, &inv, &base));
    now.content = content;
    Ok(Prediction {
        source: Some(source),
        now: Some(now),
        hit,
        passthrough: None,
    })
}

/// Declared inputs as a record keeps them: labels as the key has them.
pub(super) fn declared_content(
    inputs: &[lang::KeyInput],
    base: &BaseDirs,
) -> Vec<(String, why::Digest)> {
    inputs
        .iter()
        .map(|i| {
            let label = match base.relative_in_text(i.label.as_bytes()) {
                Some(rel) => why::field_text("input", &rel),
                None => i.label.clone(),
            };
            (label, short(&i.digest))
        })
        .collect()
}

/// A direct-mode entry's inputs as a record keeps them: absolute paths.
pub(super) fn entry_content(
    e: &key::ManifestEntry,
    base: &BaseDirs,
    source: Option<why::Digest>,
) -> Content {
    let abs = |p: &[u8]| match base.absolute(p) {
        Some(a) => String::from_utf8_lossy(&a).into_owned(),
        None => String::from_utf8_lossy(p).into_owned(),
    };
    Content {
        source,
        key: None,
        files: e
            .files
            .iter()
            .map(|f| (abs(&f.path), short(&f.digest)))
            .collect(),
        missing: e.missing.iter().map(|m| abs(&m.path)).collect(),
        not_file: e.not_file.iter().map(|m| abs(m)).collect(),
        present: e.present.iter().map(|m| abs(m)).collect(),
        declared: Vec::new(),
        inputs_known: true,
    }
}
