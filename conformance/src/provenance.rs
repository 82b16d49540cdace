//! Provenance: what a report was produced from, so that a published report can be checked
//! ([`crate::verify()`]): the moemla build (version, git commit), the golden files (a
//! SHA-256 per file and one for the set) and the device of each backend (a fingerprint).

use crate::case::CaseFile;
use crate::filter::case_id;
use moemla_core::BackendInfo;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::Path;

/// The git commit this crate was built from (40 hex digits), or `unknown` when it was
/// built without git (from a tarball); `$MOEMLA_GIT_COMMIT` at build time overrides it.
pub const GIT_COMMIT: &str = env!("MOEMLA_GIT_COMMIT");

/// Whether the working tree had uncommitted changes to tracked files when this crate was
/// built: `true`, `false` or `unknown`.
pub const GIT_DIRTY: &str = env!("MOEMLA_GIT_DIRTY");

/// The SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex digits of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a regular file's contents (streamed), or `None` when it is not a
/// regular file or cannot be read.
pub fn file_sha256(path: &Path) -> Option<String> {
    // Never open a FIFO or a device: reading one could block forever.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path).ok()?, &mut hasher).ok()?;
    Some(hex(&hasher.finalize()))
}

/// One golden case file of a run and its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoldenFile {
    /// The case ID, as in the results.
    pub case: String,
    /// SHA-256 of the file's bytes (`null` when it could not be read: a missing directory,
    /// an unreadable file).
    pub sha256: Option<String>,
}

/// The golden files a run used, each with its hash, and the hash of the set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GoldenSet {
    /// [`GoldenSet::set_hash`] of `files`.
    pub set_sha256: String,
    /// The case files, sorted by case ID.
    pub files: Vec<GoldenFile>,
}

impl GoldenSet {
    /// The files of `cases` (well formed or not) hashed, sorted by case ID.
    pub fn of(cases: &[CaseFile]) -> GoldenSet {
        let mut files: Vec<GoldenFile> = (cases.iter())
            .map(|file| {
                let path = match file {
                    Ok(case) => &case.path,
                    Err(err) => &err.path,
                };
                GoldenFile {
                    case: case_id(file).to_string(),
                    sha256: file_sha256(path),
                }
            })
            .collect();
        files.sort_by(|a, b| a.case.cmp(&b.case));
        GoldenSet {
            set_sha256: GoldenSet::set_hash(&files),
            files,
        }
    }

    /// The hash of a set of golden files: SHA-256 over one line per file,
    /// `<case ID> NUL <file SHA-256 in hex, or "unreadable"> LF`, the lines sorted by
    /// their bytes. It does not depend on the files' order or on where they lie.
    pub fn set_hash(files: &[GoldenFile]) -> String {
        let mut lines: Vec<String> = (files.iter())
            .map(|f| {
                format!(
                    "{}\0{}\n",
                    f.case,
                    f.sha256.as_deref().unwrap_or("unreadable")
                )
            })
            .collect();
        lines.sort();
        sha256_hex(lines.concat().as_bytes())
    }
}

/// The device fingerprint of a backend: SHA-256 over its name, vendor, device name,
/// device kind, memory size (or `-`) and notes (API, driver, runtime and SDK versions, as
/// the backend reports them), one per line.
pub fn device_fingerprint(info: &BackendInfo) -> String {
    let mut text = format!(
        "{}\n{}\n{}\n{:?}\n{}\n",
        info.name,
        info.vendor,
        info.device,
        info.device_kind,
        info.memory_bytes.map_or("-".to_string(), |m| m.to_string())
    );
    for note in &info.notes {
        text += note;
        text.push('\n');
    }
    sha256_hex(text.as_bytes())
}

/// A command line as one string a POSIX shell reads back: arguments made only of safe
/// characters as they are, others in single quotes.
pub fn shell_line(args: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    (args.iter())
        .map(|a| {
            if !a.is_empty() && a.chars().all(safe) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::{sha256_hex, shell_line, GoldenFile, GoldenSet};

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let args = ["moemla", "--filter", "moe route/*", "it's", ""].map(str::to_string);
        assert_eq!(
            shell_line(&args),
            "moemla --filter 'moe route/*' 'it'\\''s' ''"
        );
    }

    #[test]
    fn sha256_of_known_strings() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn set_hash_is_over_sorted_lines() {
        let file = |case: &str, sha: Option<&str>| GoldenFile {
            case: case.to_string(),
            sha256: sha.map(str::to_string),
        };
        let a = file("b/x.safetensors", Some("01"));
        let b = file("a/y.safetensors", None);
        let expected = sha256_hex(b"a/y.safetensors\0unreadable\nb/x.safetensors\x0001\n");
        assert_eq!(GoldenSet::set_hash(&[a.clone(), b.clone()]), expected);
        assert_eq!(GoldenSet::set_hash(&[b, a]), expected);
    }
}
