//! Where the HIP runtime and hipRTC live: AMD ROCm and Hygon DTK, and the env overrides.
//!
//! One code path serves both stacks: DTK's `libgalaxyhip.so` exports the HIP API under
//! the same names as ROCm's `libamdhip64.so`. Only the file names and install folders
//! differ, so a [`Flavour`] is just which list a library was found through.

use std::fmt;
use std::path::{Path, PathBuf};

/// Env var naming the exact HIP runtime library file to try first.
pub const ENV_HIP_LIB: &str = "MOEMLA_HIP_LIB";
/// Env var naming the exact hipRTC library file to try first.
pub const ENV_HIPRTC_LIB: &str = "MOEMLA_HIPRTC_LIB";

/// Which HIP stack a library belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// AMD ROCm (`libamdhip64.so`, `libhiprtc.so`), e.g. MI300X (gfx942), MI250 (gfx90a).
    Rocm,
    /// Hygon DTK (`libgalaxyhip.so`), DCUs (gfx906 / gfx926 / gfx928 / gfx936).
    Dtk,
}

impl Flavour {
    /// The vendor string shown by `moemla devices`.
    pub fn vendor(self) -> &'static str {
        match self {
            Flavour::Rocm => "AMD ROCm",
            Flavour::Dtk => "Hygon DTK",
        }
    }

    /// The flavour a library file name suggests (`galaxyhip` means DTK).
    pub fn of_file(path: &Path) -> Flavour {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name {
            Some(n) if n.contains("galaxyhip") => Flavour::Dtk,
            _ => Flavour::Rocm,
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Rocm => "ROCm",
            Flavour::Dtk => "DTK",
        })
    }
}

/// One library to try: a path with a folder (checked for existence first) or a bare
/// soname (left to the dynamic linker's search: `LD_LIBRARY_PATH`, ld.so.cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// File path or soname.
    pub path: PathBuf,
    /// The stack this candidate belongs to.
    pub flavour: Flavour,
}

impl AsRef<Path> for Candidate {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// The ordered library candidates for the runtime and for hipRTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchList {
    /// HIP runtime candidates, in order.
    pub runtime: Vec<Candidate>,
    /// hipRTC candidates, in order. After these the loaded runtime library itself is
    /// tried: ROCm 5.x (and DTK builds based on it) export `hiprtc*` from `libamdhip64`.
    pub hiprtc: Vec<Candidate>,
}

// Sonames by ROCm major version: 7.x, 6.x, 5.x.
const ROCM_RUNTIME: [&str; 4] = [
    "libamdhip64.so",
    "libamdhip64.so.7",
    "libamdhip64.so.6",
    "libamdhip64.so.5",
];
const ROCM_HIPRTC: [&str; 4] = [
    "libhiprtc.so",
    "libhiprtc.so.7",
    "libhiprtc.so.6",
    "libhiprtc.so.5",
];
const DTK_RUNTIME: [&str; 2] = ["libgalaxyhip.so", "libgalaxyhip.so.5"];
const DTK_HIPRTC: [&str; 2] = ["libhiprtc.so", "libhiprtc.so.5"];

impl SearchList {
    /// The search list from the process environment (see [`SearchList::from_lookup`]).
    pub fn from_env() -> SearchList {
        SearchList::from_lookup(|key| std::env::var_os(key).filter(|v| !v.is_empty()))
    }

    /// The search list given an environment lookup:
    /// 1. `MOEMLA_HIP_LIB` / `MOEMLA_HIPRTC_LIB` (exact files);
    /// 2. ROCm: `$ROCM_PATH/lib`, `$HIP_PATH/lib`, `/opt/rocm/lib`, then the bare sonames;
    /// 3. DTK: `$DTK_PATH/lib`, `$DTK_PATH/hip/lib`, `/opt/dtk/lib`, `/opt/dtk/hip/lib`,
    ///    then the bare sonames.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> SearchList {
        let mut runtime = Vec::new();
        let mut hiprtc = Vec::new();
        if let Some(p) = lookup(ENV_HIP_LIB) {
            let path = PathBuf::from(p);
            let flavour = Flavour::of_file(&path);
            runtime.push(Candidate { path, flavour });
        }
        if let Some(p) = lookup(ENV_HIPRTC_LIB) {
            let path = PathBuf::from(p);
            let flavour = Flavour::of_file(&path);
            hiprtc.push(Candidate { path, flavour });
        }
        let rocm_dirs = dirs(
            &lookup,
            &[("ROCM_PATH", "lib"), ("HIP_PATH", "lib")],
            &["/opt/rocm/lib"],
        );
        let dtk_dirs = dirs(
            &lookup,
            &[("DTK_PATH", "lib"), ("DTK_PATH", "hip/lib")],
            &["/opt/dtk/lib", "/opt/dtk/hip/lib"],
        );
        push_all(&mut runtime, &rocm_dirs, &ROCM_RUNTIME, Flavour::Rocm);
        push_all(&mut runtime, &dtk_dirs, &DTK_RUNTIME, Flavour::Dtk);
        push_all(&mut hiprtc, &rocm_dirs, &ROCM_HIPRTC, Flavour::Rocm);
        push_all(&mut hiprtc, &dtk_dirs, &DTK_HIPRTC, Flavour::Dtk);
        dedup(&mut runtime);
        dedup(&mut hiprtc);
        SearchList { runtime, hiprtc }
    }
}

/// Folders from env vars (each joined with a subfolder), then fixed folders.
fn dirs(
    lookup: &impl Fn(&str) -> Option<std::ffi::OsString>,
    from_env: &[(&str, &str)],
    fixed: &[&str],
) -> Vec<PathBuf> {
    let env = from_env
        .iter()
        .filter_map(|(var, sub)| lookup(var).map(|root| PathBuf::from(root).join(sub)));
    env.chain(fixed.iter().map(PathBuf::from)).collect()
}

/// Every name in every folder, then every bare name.
fn push_all(out: &mut Vec<Candidate>, dirs: &[PathBuf], names: &[&str], flavour: Flavour) {
    for dir in dirs {
        for name in names {
            out.push(Candidate {
                path: dir.join(name),
                flavour,
            });
        }
    }
    for name in names {
        out.push(Candidate {
            path: PathBuf::from(name),
            flavour,
        });
    }
}

/// Drops repeated paths, keeping the first (e.g. `ROCM_PATH=/opt/rocm`).
fn dedup(list: &mut Vec<Candidate>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|c| seen.insert(c.path.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn env_override_is_tried_first_and_flavour_follows_the_file_name() {
        let list = SearchList::from_lookup(lookup(&[
            (ENV_HIP_LIB, "/x/libgalaxyhip.so.5"),
            (ENV_HIPRTC_LIB, "/y/libhiprtc.so"),
        ]));
        assert_eq!(list.runtime[0].path, PathBuf::from("/x/libgalaxyhip.so.5"));
        assert_eq!(list.runtime[0].flavour, Flavour::Dtk);
        assert_eq!(list.hiprtc[0].path, PathBuf::from("/y/libhiprtc.so"));
    }

    #[test]
    fn rocm_and_dtk_roots_expand_to_their_lib_folders() {
        let list = SearchList::from_lookup(lookup(&[("ROCM_PATH", "/r"), ("DTK_PATH", "/d")]));
        let paths: Vec<_> = list.runtime.iter().map(|c| c.path.clone()).collect();
        assert_eq!(paths[0], PathBuf::from("/r/lib/libamdhip64.so"));
        assert!(paths.contains(&PathBuf::from("/opt/rocm/lib/libamdhip64.so.6")));
        assert!(paths.contains(&PathBuf::from("/d/hip/lib/libgalaxyhip.so")));
        assert!(paths.contains(&PathBuf::from("/opt/dtk/lib/libgalaxyhip.so.5")));
        assert!(paths.contains(&PathBuf::from("libamdhip64.so.5")));
        let rocm_last = paths
            .iter()
            .rposition(|p| p.to_string_lossy().contains("amdhip"))
            .unwrap();
        let dtk_first = paths
            .iter()
            .position(|p| p.to_string_lossy().contains("galaxy"))
            .unwrap();
        assert!(
            rocm_last < dtk_first,
            "ROCm candidates come before DTK ones"
        );
    }

    #[test]
    fn repeated_roots_are_listed_once() {
        let list = SearchList::from_lookup(lookup(&[("ROCM_PATH", "/opt/rocm")]));
        let n = list
            .runtime
            .iter()
            .filter(|c| c.path == Path::new("/opt/rocm/lib/libamdhip64.so"))
            .count();
        assert_eq!(n, 1);
    }
}
