//! `farm cluster init | issue`: the cluster CA and node certificates.

use std::path::{Path, PathBuf};

use super::args::ClusterCommand;

use super::{err, out};

pub(super) fn run(command: Option<ClusterCommand>) -> i32 {
    match command {
        Some(ClusterCommand::Init { dir, name }) => init(&dir, &name),
        Some(ClusterCommand::Issue { name, ca, out }) => issue(&name, ca, out),
        // `farm cluster` alone: what it can do.
        None => match super::args::command().find_subcommand_mut("cluster") {
            Some(c) => super::print_help(c.clone().bin_name("farm cluster")),
            None => 0,
        },
    }
}

/// `farm cluster init DIR [--name CLUSTER]`.
fn init(dir: &Path, name: &str) -> i32 {
    let dir_s = dir.display();
    match crate::net::cluster_init(dir, name) {
        Ok(()) => {
            out(&format!(
                "cluster CA written to {dir_s}/{} and {dir_s}/{} (keep ca.key private)\n",
                crate::net::CA_CERT,
                crate::net::CA_KEY
            ));
            0
        }
        Err(e) => err(format!("cluster init: {e}")),
    }
}

/// `farm cluster issue NAME [--ca DIR] [--out DIR]`.
fn issue(name: &str, ca: Option<PathBuf>, out_dir: Option<PathBuf>) -> i32 {
    let ca = ca
        .or_else(|| std::env::var_os("FARM_CLUSTER_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let out_dir = out_dir.unwrap_or_else(|| ca.clone());
    match crate::net::cluster_issue(&ca, name, &out_dir) {
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
