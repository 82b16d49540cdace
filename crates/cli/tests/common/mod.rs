//! What the CLI's test binaries share: running `moemla` without the caller's `MOEMLA_*`
//! settings, the committed golden set, exit-code checks and temporary directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The committed golden set.
pub fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/golden")
}

/// Runs `moemla ARGS` with none of the environment variables its options read.
pub fn moemla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(args)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_ALLOW_UNSUPPORTED")
        .env_remove("MOEMLA_BACKEND")
        .env_remove("MOEMLA_GOLDEN")
        .env_remove("MOEMLA_PLUGIN_PATH")
        .output()
        .expect("run moemla")
}

/// Checks the exit code (showing the output if it is not `want`); returns stdout.
pub fn assert_code(out: &Output, want: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(want),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh temporary directory for one test, removed on drop.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new empty directory named after `tag`, this process and a per-call counter (so tests
/// running at once never share one).
pub fn temp_dir(tag: &str) -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "moemla-cli-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
