//! The numpy peer: the same ops on the same inputs, timed by `benches/peer/peer.py`.
//!
//! Inputs go to the peer as case files in the golden layout (`in.<arg>` tensors, `op` and
//! `params` metadata), so the peer also runs golden files unchanged.

use crate::case::BenchCase;
use crate::inputs::BenchInputs;
use crate::timing::Budget;
use moemla_core::{DType, Error, HostTensor, Result};
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the peer script lives: env `MOEMLA_PEER_SCRIPT`, else `benches/peer/peer.py` of
/// this source tree.
pub fn script() -> PathBuf {
    std::env::var_os("MOEMLA_PEER_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/peer.py"))
}

/// Writes `inputs` of `case` as a case file at `path`.
pub fn write_case(path: &Path, case: &BenchCase, inputs: &BenchInputs) -> Result<()> {
    let params = match case {
        BenchCase::Route { params, .. } => serde_json::to_string(params),
        BenchCase::Experts { .. } => Ok("{}".to_string()),
        BenchCase::Mla { .. } => serde_json::to_string(&BenchCase::mla_params()),
    }
    .map_err(|e| peer_error("serialising params", e))?;
    let metadata = HashMap::from([
        ("op".to_string(), case.op().name().to_string()),
        ("params".to_string(), params),
    ]);
    let views = inputs
        .tensors
        .iter()
        .map(|(name, t)| Ok((format!("in.{name}"), view(t)?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| peer_error("writing the case file", e))
}

fn view(t: &HostTensor) -> Result<TensorView<'_>> {
    let dtype = match t.dtype() {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::I32 => safetensors::Dtype::I32,
        DType::F8E4M3 => safetensors::Dtype::F8_E4M3,
        DType::U8 => safetensors::Dtype::U8,
    };
    TensorView::new(dtype, t.dims().to_vec(), t.as_bytes())
        .map_err(|e| peer_error("tensor view", e))
}

/// Runs the peer on `files` and returns each file's median time in seconds.
///
/// OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the peer's environment: some
/// machines set them to work around old OpenBLAS builds, and they slow a current numpy.
pub fn run_numpy(files: &[PathBuf], budget: Budget) -> Result<Vec<f64>> {
    let output = Command::new(std::env::var("MOEMLA_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(script())
        .args(["--min-reps", &budget.min_reps.to_string()])
        .args(["--max-reps", &budget.max_reps.to_string()])
        .args(["--target-ms", &budget.target.as_millis().to_string()])
        .args(files)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .map_err(|e| peer_error("starting python3", e))?;
    if !output.status.success() {
        return Err(peer_error(
            "peer.py",
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let times: Vec<f64> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["median_s"].as_f64())
                .ok_or_else(|| peer_error("parsing peer.py output", line))
        })
        .collect::<Result<_>>()?;
    if times.len() != files.len() {
        return Err(peer_error(
            "peer.py",
            format!("{} results for {} cases", times.len(), files.len()),
        ));
    }
    Ok(times)
}

fn peer_error(call: &str, e: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: "numpy peer".into(),
        call: call.into(),
        message: e.to_string(),
    }
}
