//! Where the committed golden set lives.

use std::path::{Path, PathBuf};

/// Environment variable overriding the default golden directories (a path list, like
/// `PATH`).
pub const GOLDEN_ENV: &str = "MOEMLA_GOLDEN";

/// The golden set committed in the repository this crate was built from
/// (`<repo>/conformance/golden`, located at compile time).
pub fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// The contract-v2 golden set committed beside it (`<repo>/conformance/golden-v2`: FP8
/// weights and cache, V4 routing, sparse attention, the indexer). Not among
/// [`default_dirs`]: run it with `--golden` (a backend without v2 would skip it all).
pub fn committed_v2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden-v2")
}

/// The golden directories to use when none is given: those in `$MOEMLA_GOLDEN` (a path
/// list, like `PATH`), else `conformance/golden` under the current directory if it exists,
/// else [`committed_dir`]. An empty `$MOEMLA_GOLDEN` counts as unset.
///
/// An empty entry in the list (`MOEMLA_GOLDEN='::'`, `a::b`, a trailing separator) is an
/// error naming the variable and the entry, never an empty directory name.
pub fn default_dirs() -> Result<Vec<PathBuf>, String> {
    if let Some(list) = std::env::var_os(GOLDEN_ENV).filter(|v| !v.is_empty()) {
        let dirs: Vec<PathBuf> = std::env::split_paths(&list).collect();
        if let Some(at) = dirs.iter().position(|d| d.as_os_str().is_empty()) {
            return Err(format!(
                "${GOLDEN_ENV} ({list:?}) has an empty entry (number {} of {}): list golden \
                 directories or case files separated by '{}', none of them empty",
                at + 1,
                dirs.len(),
                if cfg!(windows) { ';' } else { ':' }
            ));
        }
        return Ok(dirs);
    }
    let local = Path::new("conformance").join("golden");
    Ok(vec![if local.is_dir() {
        local
    } else {
        committed_dir()
    }])
}
