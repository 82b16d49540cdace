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

/// The golden directories to use when none is given: those in `$MOEMLA_GOLDEN`, else
/// `conformance/golden` under the current directory if it exists, else
/// [`committed_dir`].
pub fn default_dirs() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os(GOLDEN_ENV).filter(|v| !v.is_empty()) {
        return std::env::split_paths(&list).collect();
    }
    let local = Path::new("conformance").join("golden");
    vec![if local.is_dir() {
        local
    } else {
        committed_dir()
    }]
}
