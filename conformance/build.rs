//! Embeds the git commit the crate is built from (for the reports' provenance):
//! `MOEMLA_GIT_COMMIT` and `MOEMLA_GIT_DIRTY` (`true`, `false`, or `unknown`). Taken from
//! `$MOEMLA_GIT_COMMIT` when set (a packager building from a tarball), else from
//! `git rev-parse HEAD` and `git status`, else `unknown` (no git, or not a repository).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git command's trimmed stdout in `dir`, if git ran and succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=MOEMLA_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let (commit, dirty) = match std::env::var("MOEMLA_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => (c.trim().to_string(), "unknown".to_string()),
        _ => match git(&dir, &["rev-parse", "HEAD"]).filter(|c| !c.is_empty()) {
            Some(commit) => {
                let dirty = git(&dir, &["status", "--porcelain", "--untracked-files=no"])
                    .map_or("unknown".to_string(), |s| (!s.is_empty()).to_string());
                (commit, dirty)
            }
            None => ("unknown".to_string(), "unknown".to_string()),
        },
    };
    // Rebuild when HEAD moves or the index changes (a commit, a checkout, a staged edit).
    if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        let mut watch = vec![git_dir.join("HEAD"), git_dir.join("index")];
        watch.push(git_dir.join("packed-refs"));
        if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(git_dir.join(branch));
        }
        // A missing file would make cargo rerun the script on every build.
        for file in watch.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=MOEMLA_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=MOEMLA_GIT_DIRTY={dirty}");
}
