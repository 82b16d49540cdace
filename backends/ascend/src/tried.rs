//! The record of every library path the loader tried, and its compact summary for
//! `Unavailable`: files that do not exist are grouped (directories sharing the missing
//! names, under their common parent, as `parent/{a, b}: none of x.so, y.so found`); any
//! other failure (a dlopen error) is listed on its own. Every path tried can be read back
//! from the summary.

use std::path::{Path, PathBuf};

/// The paths tried so far, in order.
#[derive(Default)]
pub struct Tried {
    /// (directory, file name) of files that do not exist.
    missing: Vec<(PathBuf, String)>,
    /// `path: error` of files that exist but could not be loaded.
    failed: Vec<String>,
}

impl Tried {
    /// Records that `path` does not exist.
    pub fn not_found(&mut self, path: &Path) {
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        self.missing.push((dir, name.into_owned()));
    }

    /// Records that `path` exists but failed to load with `error`.
    pub fn failed(&mut self, path: &Path, error: impl std::fmt::Display) {
        self.failed.push(format!("{}: {error}", path.display()));
    }

    /// Every attempt, compactly: `; `-separated groups of missing files, then the failures.
    pub fn summary(&self) -> String {
        // Directory -> the names missing there, directories in the order first tried.
        let mut by_dir: Vec<(&Path, Vec<&str>)> = Vec::new();
        for (dir, name) in &self.missing {
            match by_dir.iter_mut().find(|(d, _)| d == dir) {
                Some((_, names)) => names.push(name),
                None => by_dir.push((dir, vec![name])),
            }
        }
        // Consecutive directories missing the same names, under a common parent, form a group.
        let mut groups: Vec<(Vec<&Path>, &[&str])> = Vec::new();
        for (dir, names) in &by_dir {
            match groups.last_mut() {
                Some((dirs, n)) if *n == names.as_slice() && shares_parent(dirs[0], dir) => {
                    dirs.push(dir)
                }
                _ => groups.push((vec![dir], names)),
            }
        }
        let mut parts: Vec<String> = groups
            .iter()
            .map(|(dirs, names)| match names {
                [name] if dirs.len() == 1 => format!("{}: not found", dirs[0].join(name).display()),
                _ => format!("{}: none of {} found", brace(dirs), names.join(", ")),
            })
            .collect();
        parts.extend(self.failed.iter().cloned());
        parts.join("; ")
    }
}

/// The deepest common ancestor of `a` and `b`.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

/// Whether `a` and `b` share more than the file-system root and one level under it (so
/// `/usr/local/Ascend/...` and `/opt/cann/...` stay apart).
fn shares_parent(a: &Path, b: &Path) -> bool {
    common_ancestor(a, b).components().count() > 2
}

/// `dirs` as `ancestor/{rel, rel, ...}` (a single directory as itself).
fn brace(dirs: &[&Path]) -> String {
    if let [dir] = dirs {
        return dir.display().to_string();
    }
    let base = dirs[1..]
        .iter()
        .fold(dirs[0].to_path_buf(), |acc, d| common_ancestor(&acc, d));
    let rels: Vec<String> = dirs
        .iter()
        .map(|d| d.strip_prefix(&base).unwrap_or(d).display().to_string())
        .collect();
    format!("{}/{{{}}}", base.display(), rels.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths a summary names (the inverse of `summary` for the missing files).
    fn expand(summary: &str) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for part in summary.split("; ") {
            if let Some(path) = part.strip_suffix(": not found") {
                paths.push(PathBuf::from(path));
                continue;
            }
            let (dirs, names) = part.split_once(": none of ").expect("a group");
            let names = names.strip_suffix(" found").expect("group end");
            let dirs: Vec<PathBuf> = match dirs.split_once("/{") {
                Some((base, rels)) => rels
                    .trim_end_matches('}')
                    .split(", ")
                    .map(|r| Path::new(base).join(r))
                    .collect(),
                None => vec![PathBuf::from(dirs)],
            };
            for d in &dirs {
                paths.extend(names.split(", ").map(|n| d.join(n)));
            }
        }
        paths
    }

    #[test]
    fn every_missing_path_can_be_read_back_from_a_short_summary() {
        let names = [
            "libascendcl.so",
            "libnnopbase.so",
            "libopapi.so",
            "libopapi_nn.so",
        ];
        let rels = ["lib64", "x86_64-linux/lib64", "opp/op_api/lib/linux/x86_64"];
        // In the loader's order; libascendcl.so is found in the second root's
        // x86_64-linux/lib64, so it is not looked for after that.
        let found = Path::new("/usr/local/Ascend/latest/x86_64-linux/lib64/libascendcl.so");
        let mut want = Vec::new();
        for name in names {
            'search: for root in ["/opt/cann", "/usr/local/Ascend/latest"] {
                for rel in rels {
                    let path = Path::new(root).join(rel).join(name);
                    if path == found {
                        break 'search;
                    }
                    want.push(path);
                }
            }
        }
        let mut tried = Tried::default();
        want.iter().for_each(|p| tried.not_found(p));
        let summary = tried.summary();
        let mut got = expand(&summary);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{summary}");
        assert!(summary.contains(
            "/opt/cann/{lib64, x86_64-linux/lib64, opp/op_api/lib/linux/x86_64}: none of \
             libascendcl.so, libnnopbase.so, libopapi.so, libopapi_nn.so found"
        ));
        assert!(summary.contains(
            "/usr/local/Ascend/latest/{x86_64-linux/lib64, opp/op_api/lib/linux/x86_64}: none \
             of libnnopbase.so, libopapi.so, libopapi_nn.so found"
        ));
        assert!(summary.len() < 450, "{} chars: {summary}", summary.len());
    }

    #[test]
    fn a_single_file_and_load_errors_are_listed_plainly() {
        let mut tried = Tried::default();
        tried.not_found(Path::new("/x/libmoemla_cann_emulator.so"));
        tried.failed(Path::new("/y/libascendcl.so"), "invalid ELF header");
        assert_eq!(
            tried.summary(),
            "/x/libmoemla_cann_emulator.so: not found; /y/libascendcl.so: invalid ELF header"
        );
    }
}
