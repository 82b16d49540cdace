//! The adversarial properties against every backend, each in a child process of this test
//! binary: an abort, a crash or a hang in a backend fails its test here instead of killing
//! the harness. A backend that cannot open on this machine is skipped with its reason,
//! unless env `MOEMLA_REQUIRE` (comma list) names it.
//!
//! Env `MOEMLA_ADVERSARIAL_CASES` sets the cases per property (default: per backend below).

use moemla_core::{Backend, Error, Result};
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which backend a child process tests.
const CHILD_ENV: &str = "MOEMLA_ADVERSARIAL_CHILD";
/// What a child prints when its backend cannot open here.
const SKIPPED: &str = "adversarial: skipped: ";
/// A child taking longer than this is hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The backend named `name` and the cases per property it runs by default (PoCL and the
/// CANN emulator are slower than the CPU reference).
fn open(name: &str) -> Result<(Arc<dyn Backend>, u32)> {
    match name {
        "cpu" => Ok((Arc::new(moemla_cpu::CpuBackend::new()), 256)),
        "opencl" => Ok((moemla_opencl::shared()? as Arc<dyn Backend>, 64)),
        "ascend" => {
            use_cann_emulator_unless_configured();
            Ok((Arc::new(moemla_ascend::AscendBackend::new()?), 64))
        }
        other => Err(Error::Unavailable {
            backend: other.into(),
            reason: "not a backend of this test".into(),
        }),
    }
}

/// Points the Ascend loader at the CANN emulator built beside this test binary, unless the
/// environment already says where CANN is.
fn use_cann_emulator_unless_configured() {
    let configured = ["MOEMLA_ASCEND_LIB", "MOEMLA_ASCEND_LIB_DIR"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if configured {
        return;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps directory");
    let so = deps.join("libmoemla_cann_emulator.so");
    // This child process is single-threaded at this point: nothing reads the environment
    // concurrently.
    std::env::set_var("MOEMLA_ASCEND_LIB", so);
}

/// Child entry point: runs every property against the backend named by `CHILD_ENV`.
#[test]
#[ignore = "entry point of the child processes the other tests start"]
fn child() {
    let name = std::env::var(CHILD_ENV).expect("run by the parent tests only");
    let (backend, default_cases) = match open(&name) {
        Ok(b) => b,
        Err(e) => {
            println!("{SKIPPED}{e}");
            return;
        }
    };
    let cases = std::env::var("MOEMLA_ADVERSARIAL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    match moemla_adversarial::run_all(&*backend, cases) {
        Ok(reports) => {
            for r in reports {
                println!("adversarial: {name}: {}: {} cases held", r.name, r.cases);
            }
        }
        Err(failure) => panic!("{name}: {failure}"),
    }
}

/// Runs the child for `name` and fails unless it exits cleanly in time.
fn run_child(name: &str) {
    let exe = std::env::current_exe().expect("test executable path");
    // The child's output goes to files (a pipe nobody reads while waiting would fill up and
    // block the child), so that a hung child's last words can be shown too.
    let logs = std::env::temp_dir().join(format!("moemla-adversarial-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log directory");
    let (out_path, err_path) = (
        logs.join(format!("{name}.out")),
        logs.join(format!("{name}.err")),
    );
    let log = |p: &Path| Stdio::from(File::create(p).expect("child log file"));
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .stdout(log(&out_path))
        .stderr(log(&err_path))
        .spawn()
        .expect("start the child test process");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name}: hung: no result after {CHILD_TIMEOUT:?}; its output so far:\n{}\n{}",
                tail(&read(&out_path)),
                tail(&read(&err_path))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    let _ = std::fs::remove_dir_all(&logs);
    print!("{stdout}");
    assert!(
        status.success(),
        "{name}: the child process failed ({status}): an abort, crash or property failure\n{}\n{}",
        tail(&stdout),
        tail(&stderr)
    );
    if let Some(reason) = stdout.lines().find_map(|l| l.strip_prefix(SKIPPED)) {
        let required = std::env::var("MOEMLA_REQUIRE").unwrap_or_default();
        assert!(
            !required.split(',').any(|r| r.trim() == name),
            "{name} is required (MOEMLA_REQUIRE) but unavailable: {reason}"
        );
    }
}

/// The last 6000 bytes of `s` (a minimised failing input can be long).
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(6000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[test]
fn cpu_survives_adversarial_inputs() {
    run_child("cpu");
}

#[test]
fn opencl_survives_adversarial_inputs() {
    run_child("opencl");
}

#[test]
fn ascend_survives_adversarial_inputs() {
    run_child("ascend");
}
