//! The `moemla` binary given bad arguments, a bad environment or hostile golden files:
//! usage errors exit 2 with a message naming the argument, sizes the machine cannot hold
//! are typed errors (never an abort), and bad case files are reported (exit 1) without
//! panicking or hanging.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `moemla` with `args` and `env`, killing it (and failing) after `limit`.
fn moemla_with(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moemla"));
    cmd.args(args)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_BACKEND")
        .env_remove("MOEMLA_GOLDEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run moemla");
    let start = Instant::now();
    while child.try_wait().expect("wait for moemla").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("moemla {args:?} ran for over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("moemla output")
}

fn moemla(args: &[&str]) -> Output {
    moemla_with(args, &[], Duration::from_secs(120))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bench_rejects_zero_absurd_sizes_and_non_float_dtypes_as_usage_errors() {
    let cases: [(&[&str], &str); 7] = [
        // 2^44 MiB: `MiB << 20` used to wrap to 0 bytes.
        (&["--copy-mib", "17592186044416"], "--copy-mib"),
        (&["--copy-mib", "0"], "--copy-mib"),
        (&["--copy-mib=-1"], "--copy-mib"),
        (&["--gemm-size", "0"], "--gemm-size"),
        (&["--gemm-size", "18446744073709551616"], "--gemm-size"),
        (&["--dtype", "i32"], "I32 is not a run dtype"),
        (&["--dtype", "f64"], "unknown dtype `f64`"),
    ];
    for (extra, text) in cases {
        let mut args = vec!["bench", "--backend", "cpu"];
        args.extend_from_slice(extra);
        let out = moemla(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(text), "{extra:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{extra:?}: nothing measured");
    }
}

#[test]
fn bench_sizes_beyond_memory_are_typed_errors_before_anything_is_measured() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--copy-mib", "1000000"],
            "`cpu` copy ceiling: 2 device buffers of 1048576000000 bytes",
        ),
        (&["--copy-mib", "16777216"], "`cpu` copy ceiling"),
        (
            &["--gemm-size", "10000000"],
            "`cpu` GEMM ceiling: 3 F32 device matrices of 10000000^2",
        ),
    ];
    for (extra, text) in cases {
        let mut args = vec!["bench", "--backend", "cpu", "--dtype", "f32"];
        args.extend_from_slice(extra);
        let out = moemla_with(&args, &[], Duration::from_secs(60));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(text), "{extra:?}: {err}");
        assert!(err.contains("cannot allocate"), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?}: nothing measured");
    }
}

#[test]
fn empty_entries_in_moemla_golden_are_a_clear_error() {
    for list in ["::", "conformance/golden::"] {
        let out = moemla_with(
            &["conformance", "--backend", "cpu"],
            &[("MOEMLA_GOLDEN", list)],
            Duration::from_secs(60),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{list}: {err}");
        assert!(
            err.contains("$MOEMLA_GOLDEN") && err.contains("empty entry"),
            "{list}: {err}"
        );
        assert!(out.stdout.is_empty(), "{list}: no report with empty names");
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of safetensors `bytes` without tensor `drop` (the data section rebuilt so the
/// remaining offsets stay contiguous).
fn without_tensor(bytes: &[u8], drop: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert!(header.remove(drop).is_some(), "no tensor {drop}");
    let data = &bytes[8 + n..];
    let mut names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort_by_key(|k| header[k]["data_offsets"][0].as_u64().unwrap());
    let mut out_data = Vec::new();
    for name in names {
        let offsets = &mut header[&name]["data_offsets"];
        let (s, e) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        let start = out_data.len();
        out_data.extend_from_slice(&data[s..e]);
        *offsets = serde_json::json!([start, out_data.len()]);
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&out_data);
    out
}

#[cfg(unix)]
#[test]
fn conformance_reports_hostile_case_files_and_finishes() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("moemla-cli-hostile-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/golden");
    let case = std::fs::read(committed.join("moe_route/f32/v3_t1.safetensors")).unwrap();
    std::fs::write(dir.0.join("good.safetensors"), &case).unwrap();
    // No main input: loading this used to panic (exit 101, no report).
    std::fs::write(
        dir.0.join("no_logits.safetensors"),
        without_tensor(&case, "in.logits"),
    )
    .unwrap();
    // A FIFO: reading it used to block forever.
    let made = Command::new("mkfifo")
        .arg(dir.0.join("fifo.safetensors"))
        .status()
        .unwrap();
    assert!(made.success());
    // A link to /dev/zero: reading it used to allocate until out of memory.
    std::os::unix::fs::symlink("/dev/zero", dir.0.join("zero.safetensors")).unwrap();

    let golden = dir.0.to_str().unwrap();
    let out = moemla_with(
        &["conformance", "--backend", "cpu", "--golden", golden],
        &[],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Malformed goldens: exit code 4.
    assert_eq!(out.status.code(), Some(4), "{stdout}{}", stderr(&out));
    for text in [
        "missing tensor `in.logits`",
        "not a regular file (a FIFO)",
        "not a regular file (a character device)",
    ] {
        assert!(stdout.contains(text), "{text}: {stdout}");
    }
    assert_eq!(
        stdout.lines().last(),
        Some("1 passed, 0 failed, 0 skipped, 3 errors"),
        "{stdout}"
    );
}
