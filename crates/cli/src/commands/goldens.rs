//! `moemla goldens export DIR`: copy the golden set this binary was built with, so that a
//! binary copied to another machine can run it there (`--golden DIR`).

use super::CommandError;
use moemla_conformance::golden;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `moemla goldens`.
#[derive(clap::Args)]
pub struct GoldensArgs {
    #[command(subcommand)]
    action: GoldensAction,
}

/// What to do with the golden set.
#[derive(clap::Subcommand)]
enum GoldensAction {
    /// Copy the committed golden set (its `.safetensors` files, same relative paths, hence
    /// the same case IDs) into DIR, which must not exist or be empty.
    Export {
        /// The directory to create and fill.
        dir: PathBuf,
        /// Which set: `v1` (conformance/golden, the default run's) or `v2`
        /// (conformance/golden-v2).
        #[arg(long, default_value = "v1", value_parser = ["v1", "v2"])]
        set: String,
    },
}

/// Runs `moemla goldens`.
pub fn run(args: &GoldensArgs) -> Result<ExitCode, CommandError> {
    match &args.action {
        GoldensAction::Export { dir, set } => {
            let source = if set == "v2" {
                golden::committed_v2_dir()
            } else {
                golden::committed_dir()
            };
            let (files, bytes) = export(&source, dir)?;
            println!(
                "exported {files} case files ({bytes} bytes) of the {set} set from {} to {}; \
                 run them with `moemla conformance --golden {}` (or {}={})",
                source.display(),
                dir.display(),
                dir.display(),
                golden::GOLDEN_ENV,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Copies every `.safetensors` file under `source` to the same relative path under `dest`;
/// returns the count of files and bytes.
fn export(source: &Path, dest: &Path) -> Result<(usize, u64), CommandError> {
    if !source.is_dir() {
        return Err(format!(
            "the golden set this binary was built with ({}) is not on this machine: run \
             `moemla goldens export` where the binary was built (or from a checkout of the \
             same version) and copy the directory",
            source.display()
        )
        .into());
    }
    if dest.exists() {
        let mut entries = std::fs::read_dir(dest)
            .map_err(|e| format!("{} exists and cannot be listed: {e}", dest.display()))?;
        if entries.next().is_some() {
            return Err(format!("{} exists and is not empty", dest.display()).into());
        }
    }
    let mut files = 0;
    let mut bytes = 0;
    copy_tree(source, dest, &mut files, &mut bytes)?;
    Ok((files, bytes))
}

/// Copies the `.safetensors` files of `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path, files: &mut usize, bytes: &mut u64) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let list = std::fs::read_dir(from).map_err(|e| format!("cannot list {}: {e}", from.display()));
    let mut entries: Vec<_> = list?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", src.display()))?;
        if kind.is_dir() {
            copy_tree(&src, &dst, files, bytes)?;
        } else if src.extension().is_some_and(|x| x == "safetensors") {
            *bytes += std::fs::copy(&src, &dst)
                .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dst.display()))?;
            *files += 1;
        }
    }
    Ok(())
}
