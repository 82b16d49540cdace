//! Golden directories holding things that are not case files: a FIFO, a link to
//! `/dev/zero`, a directory, files whose headers describe more or fewer bytes than they
//! have, a file over the size cap. Each is reported as malformed before its data is read,
//! and the run goes on with the other cases, quickly.

mod common;

use common::{fixture_set, TempDir, FIXTURE_CASES};
use moemla_conformance::{load_cases, run, CaseFile, Report, Status, MAX_CASE_BYTES};
use moemla_cpu::CpuBackend;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Loads and runs `dirs` on the CPU backend in a thread; fails the test if that takes
/// longer than a minute (a hang) instead of waiting forever.
fn load_and_run(dirs: Vec<PathBuf>) -> (Vec<CaseFile>, Report) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let cases = load_cases(&dirs);
        let report = run(&CpuBackend::new(), &cases);
        let _ = tx.send((cases, report));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("loading and running the golden directory hung")
}

/// A safetensors file: the 8-byte header length `len`, then `rest`.
fn raw(path: &Path, len: u64, rest: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(rest);
    std::fs::write(path, bytes).unwrap();
}

/// The message of the malformed case `name` in `report` (it must be an error).
fn message<'a>(report: &'a Report, name: &str) -> &'a str {
    let o = (report.results.iter()).find(|o| o.case == name);
    let o = o.unwrap_or_else(|| panic!("no outcome for {name}"));
    assert_eq!(o.status, Status::Error, "{name}: {:?}", o.message);
    o.message.as_deref().unwrap()
}

#[test]
fn files_that_lie_about_their_size_are_refused_before_their_data_is_read() {
    let dir = TempDir::new("sizes");
    fixture_set(&dir.0);
    let bad = |f: &str| dir.join(&format!("bad/{f}"));
    // A header length far beyond the file (u64::MAX: 8 + n overflows).
    raw(&bad("huge_header_len.safetensors"), u64::MAX, b"{}");
    raw(&bad("long_header_len.safetensors"), 1 << 40, b"{}");
    // A header whose data section ends beyond 2^64 bytes.
    let header = br#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#;
    raw(
        &bad("huge_offsets.safetensors"),
        header.len() as u64,
        header,
    );
    // A valid case with one byte more than its header describes.
    let mut grown = std::fs::read(dir.join("moe_route/f32/route.safetensors")).unwrap();
    grown.push(0);
    std::fs::write(bad("trailing_byte.safetensors"), &grown).unwrap();
    // A file (sparse: no disk used) over the size cap.
    let big = std::fs::File::create(bad("over_cap.safetensors")).unwrap();
    big.set_len(MAX_CASE_BYTES + 1).unwrap();
    std::fs::write(bad("seven_bytes.safetensors"), [1u8; 7]).unwrap();

    let (cases, report) = load_and_run(vec![dir.0.clone()]);
    assert_eq!(cases.len(), FIXTURE_CASES + 6);
    let expected = [
        (
            "huge_header_len",
            "its header length (18446744073709551615 bytes) exceeds the file (10 bytes)",
        ),
        (
            "long_header_len",
            "its header length (1099511627776 bytes) exceeds the file (10 bytes)",
        ),
        ("huge_offsets", "its header describes more than 2^64 bytes"),
        ("trailing_byte", "bytes, the file has"),
        (
            "over_cap",
            "larger than the 1073741824-byte limit on a case file",
        ),
        (
            "seven_bytes",
            "7 bytes, shorter than the 8-byte header length",
        ),
    ];
    for (file, text) in expected {
        let m = message(&report, &format!("bad/{file}.safetensors"));
        assert!(m.contains(text), "{file}: {m}");
        assert!(m.starts_with("malformed case "), "{m}");
    }
    assert_eq!(report.counts(None).passed, FIXTURE_CASES);
    assert_eq!(report.counts(None).errors, expected.len());
    assert_eq!(report.counts(None).failed, 0);
}

#[cfg(unix)]
#[test]
fn a_fifo_a_device_and_a_directory_are_refused_and_links_to_cases_followed() {
    let dir = TempDir::new("special");
    fixture_set(&dir.0);
    std::fs::create_dir_all(dir.join("bad")).unwrap();
    let fifo = dir.join("bad/fifo.safetensors");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    std::os::unix::fs::symlink("/dev/zero", dir.join("bad/zero.safetensors")).unwrap();
    std::fs::create_dir_all(dir.join("bad/folder.safetensors/inner")).unwrap();
    std::os::unix::fs::symlink(
        dir.join("nowhere.safetensors"),
        dir.join("bad/dangling.safetensors"),
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.join("moe_route"), dir.join("bad/link_dir.safetensors"))
        .unwrap();
    // A link to a regular case file is followed and runs like the case itself.
    std::fs::create_dir_all(dir.join("linked")).unwrap();
    std::os::unix::fs::symlink(
        dir.join("moe_route/f32/route.safetensors"),
        dir.join("linked/route.safetensors"),
    )
    .unwrap();

    // The FIFO and the device also given directly, as `--golden` paths.
    let dirs = vec![dir.0.clone(), fifo.clone(), "/dev/zero".into()];
    let (cases, report) = load_and_run(dirs);
    assert_eq!(cases.len(), FIXTURE_CASES + 1 + 4 + 2);
    for (file, text) in [
        ("bad/fifo", "not a regular file (a FIFO)"),
        ("bad/zero", "not a regular file (a character device)"),
        ("bad/dangling", "cannot read: "),
        ("bad/link_dir", "not a regular file (a directory)"),
    ] {
        let m = message(&report, &format!("{file}.safetensors"));
        assert!(m.contains(text), "{file}: {m}");
    }
    // A directory named like a case is walked into, not read: it holds no case file.
    assert!(!report
        .results
        .iter()
        .any(|o| o.case.starts_with("bad/folder")));
    assert!(message(&report, "fifo.safetensors").contains("a FIFO"));
    assert!(message(&report, "zero").contains("a character device"));
    let linked = (report.results.iter())
        .find(|o| o.case == "linked/route.safetensors")
        .unwrap();
    assert_eq!(linked.status, Status::Pass, "{:?}", linked.message);
    let counts = report.counts(None);
    assert_eq!(
        (counts.passed, counts.failed, counts.errors),
        (FIXTURE_CASES + 1, 0, 6),
        "{}",
        moemla_conformance::render(&report)
    );
}
