//! Building the example plugin (examples/plugin-c) and the test fixtures with the system
//! C compiler (`$CC`, else `cc`), into cargo's per-target temporary directory.
//!
//! Without a compiler the tests that need one print `skipped: <reason>` and pass, unless
//! env `MOEMLA_REQUIRE` (comma list) names the example plugin (`example_c`): then they fail.

// Each test binary uses a part of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The example plugin's backend name (what `plugin_info` reports).
pub const EXAMPLE: &str = "example_c";

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The example plugin's sources.
pub fn example_sources() -> Vec<PathBuf> {
    let dir = repo().join("examples/plugin-c");
    vec![dir.join("plugin.c"), dir.join("ops.c")]
}

/// A test fixture's source (backends/plugin/tests/fixtures/<name>).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The file name a shared library called `name` has on this platform (`libname.so`).
pub fn library_file(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Compiles `sources` (C99, warnings as errors, the repository's `include/` on the path)
/// into the shared library `name` with extra `flags`. `Err(reason)` when there is no C
/// compiler; a compiler that rejects the sources fails the test.
pub fn build(name: &str, sources: &[PathBuf], flags: &[&str]) -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moemla-plugin");
    std::fs::create_dir_all(&dir).expect("create the build directory");
    let out = dir.join(library_file(name));
    // Build beside the target and rename: a concurrent test never sees half a file. The
    // temporary name is unique per process and per call, since tests of one binary run
    // on threads of one process and may build the same library at once.
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let call = BUILDS.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{name}.{}.{call}.tmp", std::process::id()));
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cmd = Command::new(&compiler);
    cmd.args([
        "-std=c99",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
    ])
    .args(["-shared", "-fPIC", "-fvisibility=hidden"])
    .arg("-I")
    .arg(repo().join("include"))
    .args(flags)
    .args(sources)
    .arg("-o")
    .arg(&tmp)
    .arg("-lm");
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => return Err(format!("no C compiler: running `{compiler}` failed: {e}")),
    };
    assert!(
        output.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out).expect("move the built library into place");
    Ok(out)
}

/// Compiles the C program `source` (text) into the executable `name` and returns its
/// standard output. `Err(reason)` when there is no C compiler.
pub fn run_program(name: &str, source: &str) -> Result<String, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moemla-plugin");
    std::fs::create_dir_all(&dir).expect("create the build directory");
    let (src, exe) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&src, source).expect("write the program");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cmd = Command::new(&compiler);
    cmd.args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => return Err(format!("no C compiler: running `{compiler}` failed: {e}")),
    };
    assert!(
        output.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = Command::new(&exe).output().expect("run the program");
    assert!(run.status.success(), "{} failed", exe.display());
    Ok(String::from_utf8(run.stdout).expect("UTF-8 output"))
}

/// Builds the example plugin as `name` with extra `flags`.
pub fn build_example(name: &str, flags: &[&str]) -> Result<PathBuf, String> {
    build(name, &example_sources(), flags)
}

/// Whether env `MOEMLA_REQUIRE` lists the example plugin.
pub fn example_required() -> bool {
    std::env::var("MOEMLA_REQUIRE")
        .map(|v| v.split(',').any(|n| n.trim() == EXAMPLE))
        .unwrap_or(false)
}

/// `build`'s library, or `None` after printing why the test is skipped (no compiler).
/// Panics instead when `MOEMLA_REQUIRE` names the example plugin.
pub fn built_or_skip<T>(built: Result<T, String>) -> Option<T> {
    match built {
        Ok(path) => Some(path),
        Err(reason) if example_required() => {
            panic!("`{EXAMPLE}` is required by MOEMLA_REQUIRE: {reason}")
        }
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}
