//! Input roots as REAPI Merkle trees: `Directory` messages, canonical (names sorted,
//! each once), so that the same files give the same root digest whatever order
//! they were listed in.

use std::collections::BTreeMap;

use super::message_digest;
use super::proto::{Digest, Directory, DirectoryNode, FileNode, SymlinkNode};

/// One input file: its path relative to the input root, its content's digest and
/// whether it is executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub path: String,
    pub digest: Digest,
    pub executable: bool,
}

/// A built tree: the root's digest and every `Directory` blob (root included), each
/// once, to upload beside the files' blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    pub root: Digest,
    pub directories: Vec<(Digest, Vec<u8>)>,
}

/// Why a list of inputs makes no tree; names the path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error(
        "input path {0:?}: not a relative path of plain names (no '', '.', '..' or leading '/')"
    )]
    BadPath(String),
    #[error(
        "input path {0:?}: listed twice with different contents, or as a file and a directory"
    )]
    Conflict(String),
}

/// One symbolic link of the input root: its path relative to the root and its target,
/// verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputLink {
    pub path: String,
    pub target: String,
}

#[derive(Default)]
struct Dir {
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, Dir>,
    links: BTreeMap<String, String>,
}

fn components(path: &str) -> Result<Vec<&str>, TreeError> {
    let bad = || TreeError::BadPath(path.to_string());
    if path.is_empty() || path.starts_with('/') {
        return Err(bad());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0'))
    {
        return Err(bad());
    }
    Ok(parts)
}

impl Dir {
    fn dir_at(&mut self, parts: &[&str], whole: &str) -> Result<&mut Dir, TreeError> {
        let mut d = self;
        for p in parts {
            if d.files.contains_key(*p) || d.links.contains_key(*p) {
                return Err(TreeError::Conflict(whole.to_string()));
            }
            d = d.dirs.entry((*p).to_string()).or_default();
        }
        Ok(d)
    }

    /// Serializes this directory after its children, pushing every blob; its digest.
    fn seal(&self, out: &mut BTreeMap<String, (Digest, Vec<u8>)>) -> Digest {
        let msg = Directory {
            files: self
                .files
                .iter()
                .map(|(name, (d, x))| FileNode {
                    name: name.clone(),
                    digest: Some(d.clone()),
                    is_executable: *x,
                    node_properties: None,
                })
                .collect(),
            directories: self
                .dirs
                .iter()
                .map(|(name, sub)| DirectoryNode {
                    name: name.clone(),
                    digest: Some(sub.seal(out)),
                })
                .collect(),
            symlinks: self
                .links
                .iter()
                .map(|(name, target)| SymlinkNode {
                    name: name.clone(),
                    target: target.clone(),
                    node_properties: None,
                })
                .collect(),
            node_properties: None,
        };
        let (d, bytes) = message_digest(&msg);
        out.insert(d.hash.clone(), (d.clone(), bytes));
        d
    }
}

/// The Merkle tree of `files` plus (possibly empty) directories `dirs`. The same
/// file listed twice with the same digest and mode counts once; anything else
/// listed twice is an error.
pub fn build(files: &[InputFile], dirs: &[&str]) -> Result<MerkleTree, TreeError> {
    build_with_links(files, &[], dirs)
}

/// [`build`] with symbolic links too (each a `SymlinkNode` holding its target as
/// given). A link listed twice with the same target counts once; a name that is a
/// link and anything else is an error.
pub fn build_with_links(
    files: &[InputFile],
    links: &[InputLink],
    dirs: &[&str],
) -> Result<MerkleTree, TreeError> {
    let mut root = Dir::default();
    for l in links {
        let parts = components(&l.path)?;
        let (name, parents) = parts.split_last().expect("components are never empty");
        let d = root.dir_at(parents, &l.path)?;
        if d.dirs.contains_key(*name) || d.files.contains_key(*name) {
            return Err(TreeError::Conflict(l.path.clone()));
        }
        match d.links.get(*name) {
            Some(have) if *have != l.target => return Err(TreeError::Conflict(l.path.clone())),
            Some(_) => {}
            None => {
                d.links.insert((*name).to_string(), l.target.clone());
            }
        }
    }
    for dir in dirs {
        let parts = components(dir)?;
        root.dir_at(&parts, dir)?;
    }
    for f in files {
        let parts = components(&f.path)?;
        let (name, parents) = parts.split_last().expect("components are never empty");
        let d = root.dir_at(parents, &f.path)?;
        if d.dirs.contains_key(*name) || d.links.contains_key(*name) {
            return Err(TreeError::Conflict(f.path.clone()));
        }
        let entry = (f.digest.clone(), f.executable);
        match d.files.get(*name) {
            Some(have) if *have != entry => return Err(TreeError::Conflict(f.path.clone())),
            Some(_) => {}
            None => {
                d.files.insert((*name).to_string(), entry);
            }
        }
    }
    let mut blobs = BTreeMap::new();
    let root_digest = root.seal(&mut blobs);
    Ok(MerkleTree {
        root: root_digest,
        directories: blobs.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reapi::{digest_of, proto::Directory};
    use prost::Message;

    fn file(path: &str, content: &str, executable: bool) -> InputFile {
        InputFile {
            path: path.into(),
            digest: digest_of(content.as_bytes()),
            executable,
        }
    }

    #[test]
    fn equal_trees_equal_digests_whatever_the_order() {
        let a = vec![
            file("src/main.c", "int main;", false),
            file("include/a.h", "#define A", false),
            file("src/lib/x.c", "x", false),
            file("tool", "#!/bin/sh", true),
        ];
        let mut b = a.clone();
        b.reverse();
        b.push(a[0].clone()); // listed twice, same content: counted once
        let ta = build(&a, &["out"]).unwrap();
        let tb = build(&b, &["out", "src"]).unwrap();
        assert_eq!(ta, tb);
        // root, src, src/lib, include, out (empty)
        assert_eq!(ta.directories.len(), 5);
        let root = ta
            .directories
            .iter()
            .find(|(d, _)| *d == ta.root)
            .map(|(_, b)| Directory::decode(b.as_slice()).unwrap())
            .unwrap();
        let names: Vec<_> = root.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["include", "out", "src"]);
        assert_eq!(root.files[0].name, "tool");
        assert!(root.files[0].is_executable);
        // A changed byte, mode or name changes the root.
        let mut c = a.clone();
        c[3].executable = false;
        assert_ne!(build(&c, &["out"]).unwrap().root, ta.root);
        assert_ne!(build(&a, &[]).unwrap().root, ta.root);
    }

    #[test]
    fn empty_root_is_the_empty_directory() {
        let t = build(&[], &[]).unwrap();
        assert_eq!(t.root, digest_of(b""));
        assert_eq!(t.directories.len(), 1);
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        for p in ["", "/abs", "a//b", "a/../b", "./a", "a/", ".."] {
            assert_eq!(
                build(&[file(p, "x", false)], &[]),
                Err(TreeError::BadPath(p.into())),
                "{p:?}"
            );
        }
        let twice = [file("a", "x", false), file("a", "y", false)];
        assert_eq!(build(&twice, &[]), Err(TreeError::Conflict("a".into())));
        let file_and_dir = [file("a", "x", false), file("a/b", "y", false)];
        assert!(matches!(
            build(&file_and_dir, &[]),
            Err(TreeError::Conflict(_))
        ));
        assert!(matches!(
            build(&[file("a", "x", false)], &["a"]),
            Err(TreeError::Conflict(_))
        ));
    }

    #[test]
    fn links_are_symlink_nodes_and_clash_with_other_names() {
        let link = |p: &str, t: &str| InputLink {
            path: p.into(),
            target: t.into(),
        };
        let files = [file("usr/lib/ld.so", "elf", true)];
        let links = [link("lib64", "usr/lib"), link("lib64", "usr/lib")];
        let t = build_with_links(&files, &links, &["tmp"]).unwrap();
        let root = t
            .directories
            .iter()
            .find(|(d, _)| *d == t.root)
            .map(|(_, b)| Directory::decode(b.as_slice()).unwrap())
            .unwrap();
        assert_eq!(root.symlinks.len(), 1);
        assert_eq!(root.symlinks[0].name, "lib64");
        assert_eq!(root.symlinks[0].target, "usr/lib");
        let other = build_with_links(&files, &[link("lib64", "/usr/lib")], &["tmp"]).unwrap();
        assert_ne!(other.root, t.root);
        for (f, l, d) in [
            (vec![file("lib64", "x", false)], link("lib64", "a"), vec![]),
            (vec![], link("lib64", "a"), vec!["lib64/x"]),
            (
                vec![file("lib64/x", "x", false)],
                link("lib64", "a"),
                vec![],
            ),
        ] {
            let links = [l, link("lib64", "b")];
            assert!(matches!(
                build_with_links(&f, &links[..1], &d),
                Err(TreeError::Conflict(_))
            ));
            assert!(matches!(
                build_with_links(&[], &links, &[]),
                Err(TreeError::Conflict(_))
            ));
        }
    }
}
