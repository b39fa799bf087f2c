//! javac's tree jobs: the arguments a compile ships with (the same a warm JVM gets),
//! and the worker's validation and re-rooting of them.

use std::path::{Path, PathBuf};

use super::{internal_option, locale_codeset, lookup, messages_english, plan, Javac, Opt, Search};
use crate::lang::{reroot, Invocation, Passthrough, TreeArgs, TreeJobs};

impl Javac {
    /// The compile as it runs outside this process (a warm JVM, a worker): the JDK it
    /// needs and its arguments, or why it must run as a fresh javac here.
    pub(super) fn remote_job(
        &self,
        inv: &Invocation,
        dirs: &[PathBuf],
    ) -> Result<(PathBuf, TreeArgs), Passthrough> {
        let p = plan(inv);
        // The parse passes these through; a JVM that outlives the compile (or a
        // worker's) must never see one, whatever reached here.
        if let Some((a, _)) = p.user_args.iter().find(|(a, _)| internal_option(a)) {
            return Err(Passthrough::new("javac_internal_option", a.as_str()));
        }
        for var in ["JDK_JAVAC_OPTIONS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS"] {
            if std::env::var_os(var).is_some() {
                return Err(Passthrough::new("jvm_environment", var));
            }
        }
        if !messages_english() {
            return Err(Passthrough::new("locale", "messages not in English"));
        }
        let cwd = std::env::current_dir()
            .map_err(|e| Passthrough::new("working_directory", e.to_string()))?;
        let (mut args, jvm, sources_moved, paths_moved) = self.rewritten(p, dirs, Some(&cwd));
        for j in &jvm {
            // Heap and stack sizes only: any other JVM option may change behaviour.
            if !["-J-Xmx", "-J-Xms", "-J-Xss"]
                .iter()
                .any(|o| j.starts_with(o))
            {
                return Err(Passthrough::new("jvm_options", j.as_str()));
            }
        }
        if !args.iter().any(|a| a == "-encoding") {
            match locale_codeset().as_deref() {
                Some("UTF-8") => {}
                Some("ANSI_X3.4-1968") => {
                    args.insert(0, "US-ASCII".into());
                    args.insert(0, "-encoding".into());
                }
                other => {
                    return Err(Passthrough::new(
                        "locale",
                        format!("character set {}", other.unwrap_or("unknown")),
                    ))
                }
            }
        }
        if p.processing {
            // No processor was found on the paths (or this compile would have passed
            // through); a JVM that outlives the compile must not run one regardless.
            args.insert(0, "-proc:none".into());
        }
        let lint_paths = args
            .iter()
            .any(|a| a == "-Xlint" || a.starts_with("-Xlint:"));
        Ok((
            p.java_home.clone(),
            TreeArgs {
                args,
                paths_rewritten: sources_moved || (paths_moved && lint_paths),
            },
        ))
    }
}

impl TreeJobs for Javac {
    fn tree_args(&self, inv: &Invocation, dirs: &[PathBuf]) -> Result<TreeArgs, Passthrough> {
        self.remote_job(inv, dirs).map(|(_, args)| args)
    }

    fn worker_tree_args(
        &self,
        args: &[String],
        outputs: &[(String, String)],
        root: &Path,
        out: &Path,
    ) -> Result<Vec<String>, Passthrough> {
        let refuse = |what: &str, v: &str| Passthrough::new("refused", format!("{what} {v:?}"));
        let rooted = |v: &str| -> Result<String, Passthrough> {
            reroot(root, v)
                .map(|p| p.to_string_lossy().into_owned())
                .ok_or_else(|| refuse("path", v))
        };
        let mut res = Vec::with_capacity(args.len() + 1);
        let mut i = 0;
        let mut proc_none = false;
        let mut classes_dir = false;
        let mut class_path = false;
        while i < args.len() {
            let a = args[i].as_str();
            i += 1;
            if a.chars().any(|c| c.is_control()) {
                return Err(refuse("control character in", a));
            }
            if !a.starts_with('-') {
                if !a.ends_with(".java") {
                    return Err(refuse("operand", a));
                }
                res.push(rooted(a)?);
                continue;
            }
            // No argument files, JVM options or anything the table does not allow.
            let Some((opt, joined)) = lookup(a) else {
                return Err(refuse("option", a));
            };
            let name = a.split('=').next().unwrap_or(a);
            let kind = match opt {
                Opt::Flag => {
                    proc_none |= a == "-proc:none";
                    res.push(a.to_string());
                    continue;
                }
                Opt::Info | Opt::Refuse(_) => return Err(refuse("option", a)),
                other => other,
            };
            let value = match joined {
                Some(v) => v.to_string(),
                None => {
                    let Some(v) = args.get(i) else {
                        return Err(refuse("option without a value", a));
                    };
                    i += 1;
                    v.clone()
                }
            };
            class_path |= kind == Opt::Paths(Search::Class);
            let new = match kind {
                // Replaced below: nothing is ever looked up there on a worker.
                Opt::Paths(Search::Processor) => continue,
                Opt::Paths(Search::Source) if value.is_empty() => value,
                Opt::Paths(_) => {
                    let mut parts = Vec::new();
                    for e in value.split(':') {
                        parts.push(rooted(e)?);
                    }
                    parts.join(":")
                }
                Opt::Out(role) => {
                    if !outputs.iter().any(|(r, p)| r == role && *p == value) {
                        return Err(refuse("output directory", &value));
                    }
                    classes_dir |= role == "classes";
                    out.join(role).to_string_lossy().into_owned()
                }
                _ => value,
            };
            if joined.is_some() {
                res.push(format!("{name}={new}"));
            } else {
                res.push(a.to_string());
                res.push(new);
            }
        }
        // Without -d, javac writes each class beside its source (and beside each
        // source it finds on a search path): here those are links into the blob
        // store, so a class would overwrite a blob other jobs share.
        if !classes_dir {
            return Err(refuse("a job without", "-d"));
        }
        // A sender only ships compiles with no annotation processor on their paths;
        // the worker makes sure none runs whatever it was sent.
        if !proc_none {
            res.insert(0, "-proc:none".into());
        }
        // javac instantiates every plugin on the processor path (the class path when
        // none is given) even under -proc:none: an empty processor path means no code
        // from a shipped jar ever runs. A sender ships no compile with a plugin on its
        // paths, so this changes nothing of an honest job's output.
        res.splice(0..0, ["-processorpath".to_string(), String::new()]);
        // Without a class path, javac in a JVM searches that JVM's own (the helper's
        // classes), where a fresh javac would search the directory it runs in. A
        // sender always names one; a job without gets an empty one.
        if !class_path {
            res.splice(0..0, ["-classpath".to_string(), String::new()]);
        }
        Ok(res)
    }
}
