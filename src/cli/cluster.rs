//! `farm cluster init | issue`: the cluster CA and node certificates.

use std::path::PathBuf;

use super::{err, out};

pub const CLUSTER_HELP: &str = "\
farm cluster init DIR [--name CLUSTER]
    make a cluster CA in DIR (ca.crt, and ca.key readable by you only)
farm cluster issue NAME [--ca DIR] [--out DIR]
    make NAME.crt and NAME.key (0600) for one node, signed by the CA in DIR
    (default: $FARM_CLUSTER_DIR, else the current directory); written to --out
    (default: the CA directory)
";

/// Value of `--flag VALUE` in `rest`, removing both.
fn take_opt(rest: &mut Vec<String>, flag: &str) -> Result<Option<String>, i32> {
    match rest.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) if i + 1 < rest.len() => {
            let v = rest.remove(i + 1);
            rest.remove(i);
            Ok(Some(v))
        }
        Some(_) => Err(err(format!("{flag} needs a value"))),
    }
}

pub(super) fn run(rest: &[String]) -> i32 {
    let mut rest = rest.to_vec();
    let sub = if rest.is_empty() {
        String::new()
    } else {
        rest.remove(0)
    };
    match sub.as_str() {
        "init" => init(rest),
        "issue" => issue(rest),
        "" | "help" | "--help" => {
            out(CLUSTER_HELP);
            0
        }
        other => err(format!(
            "cluster: unknown subcommand `{other}`\n{CLUSTER_HELP}"
        )),
    }
}

/// `farm cluster init DIR [--name CLUSTER]`.
fn init(mut rest: Vec<String>) -> i32 {
    let name = match take_opt(&mut rest, "--name") {
        Ok(n) => n.unwrap_or_else(|| "farm".into()),
        Err(c) => return c,
    };
    let [dir] = rest.as_slice() else {
        return err(format!("usage:\n{CLUSTER_HELP}"));
    };
    match crate::net::cluster_init(&PathBuf::from(dir), &name) {
        Ok(()) => {
            out(&format!(
                "cluster CA written to {dir}/{} and {dir}/{} (keep ca.key private)\n",
                crate::net::CA_CERT,
                crate::net::CA_KEY
            ));
            0
        }
        Err(e) => err(format!("cluster init: {e}")),
    }
}

/// `farm cluster issue NAME [--ca DIR] [--out DIR]`.
fn issue(mut rest: Vec<String>) -> i32 {
    let ca = match take_opt(&mut rest, "--ca") {
        Ok(c) => c
            .or_else(|| std::env::var("FARM_CLUSTER_DIR").ok())
            .unwrap_or_else(|| ".".into()),
        Err(c) => return c,
    };
    let out_dir = match take_opt(&mut rest, "--out") {
        Ok(o) => o.unwrap_or_else(|| ca.clone()),
        Err(c) => return c,
    };
    let [name] = rest.as_slice() else {
        return err(format!("usage:\n{CLUSTER_HELP}"));
    };
    match crate::net::cluster_issue(&PathBuf::from(&ca), name, &PathBuf::from(&out_dir)) {
        Ok((crt, key)) => {
            out(&format!(
                "node {name}: {} and {}\n",
                crt.display(),
                key.display()
            ));
            0
        }
        Err(e) => err(format!("cluster issue: {e}")),
    }
}
