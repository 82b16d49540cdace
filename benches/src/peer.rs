//! The peers: the same ops on the same inputs in numpy (`benches/peer/peer.py`) or in
//! PyTorch on the CPU (`benches/peer/torch_peer.py --device cpu`, which first checks
//! itself against the committed goldens).
//!
//! Inputs go to a peer as case files in the golden layout (`in.<arg>` tensors, `op` and
//! `params` metadata), so the peers also run golden files unchanged. A case a peer cannot
//! run cheaply (or whose inputs are too large for a file) gets no time: the table says
//! n/a.

use crate::case::BenchCase;
use crate::inputs::BenchInputs;
use crate::timing::Budget;
use moemla_core::{DType, Error, Result};
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which peer times the same cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// numpy (f32 BLAS), `benches/peer/peer.py`.
    Numpy,
    /// PyTorch on the CPU in the run dtype, `benches/peer/torch_peer.py`.
    Torch,
}

/// Exit status of `torch_peer.py` when torch cannot be imported.
const TORCH_MISSING: i32 = 3;

impl Peer {
    /// `numpy` or `torch`; `None` for any other name.
    pub fn from_name(name: &str) -> Option<Peer> {
        match name {
            "numpy" => Some(Peer::Numpy),
            "torch" => Some(Peer::Torch),
            _ => None,
        }
    }

    /// The peer's name, as the table's last column names it.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Numpy => "numpy",
            Peer::Torch => "torch",
        }
    }

    /// Whether the peer runs `case`: experts (run dtype, and FP8 by dequantizing each
    /// active expert: numpy w8a16 and w8a8, torch w8a16) and dense MLA decode; numpy also
    /// routing. The FP8 cache, sparse decode, the indexer and the decode step have no peer
    /// (n/a).
    pub fn runs(self, case: &BenchCase) -> bool {
        match case {
            BenchCase::Route { .. } => self == Peer::Numpy,
            BenchCase::Experts { .. } | BenchCase::Mla { .. } => true,
            BenchCase::Fp8Experts { w8a8, .. } => self == Peer::Numpy || !w8a8,
            _ => false,
        }
    }

    /// The peer script: env `MOEMLA_PEER_SCRIPT` (numpy) / `MOEMLA_TORCH_PEER_SCRIPT`
    /// (torch), else the one in `benches/peer/` of this source tree.
    pub fn script(self) -> PathBuf {
        let (var, file) = match self {
            Peer::Numpy => ("MOEMLA_PEER_SCRIPT", "peer/peer.py"),
            Peer::Torch => ("MOEMLA_TORCH_PEER_SCRIPT", "peer/torch_peer.py"),
        };
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
    }
}

/// The committed golden sets the torch peer checks itself on before timing.
pub fn golden_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance");
    vec![root.join("golden"), root.join("golden-v2")]
}

/// Writes the inputs of `case` as a case file at `path`; `Ok(false)` (nothing written)
/// when an input is generated on the device side (too large for a file).
pub fn write_case(path: &Path, case: &BenchCase, inputs: &BenchInputs) -> Result<bool> {
    let Some(tensors) = inputs.all_host() else {
        return Ok(false);
    };
    let params = match case {
        BenchCase::Route { params, .. } => serde_json::to_string(params),
        BenchCase::Experts { .. } | BenchCase::Fp8Experts { .. } => {
            serde_json::to_string(&case.experts_params())
        }
        BenchCase::Mla { .. } | BenchCase::MlaFp8 { .. } | BenchCase::Step { .. } => {
            serde_json::to_string(&case.decode_params())
        }
        BenchCase::Sparse { .. } => serde_json::to_string(&BenchCase::sparse_params()),
        BenchCase::Indexer { .. } => serde_json::to_string(&case.indexer_params()),
    }
    .map_err(|e| peer_error("serialising params", e))?;
    let metadata = HashMap::from([
        ("op".to_string(), case.op().name().to_string()),
        ("params".to_string(), params),
    ]);
    let views = tensors
        .into_iter()
        .map(|(name, t)| Ok((format!("in.{name}"), view(t)?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| peer_error("writing the case file", e))?;
    Ok(true)
}

fn view(t: &moemla_core::HostTensor) -> Result<TensorView<'_>> {
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

/// What a peer run gave.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Each file's median time, seconds, in order.
    Times(Vec<f64>),
    /// The peer cannot run here (torch not importable): the reason.
    Unavailable(String),
}

/// Runs `peer` on `files` and returns each file's median time in seconds.
///
/// OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the peer's environment: some
/// machines set them to work around old OpenBLAS builds, and they slow a current numpy.
pub fn run(peer: Peer, files: &[PathBuf], budget: Budget) -> Result<Outcome> {
    let mut cmd = Command::new(std::env::var("MOEMLA_PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(peer.script());
    if peer == Peer::Torch {
        cmd.args(["--device", "cpu", "--cases"]);
        for dir in golden_dirs() {
            cmd.arg("--golden").arg(dir);
        }
    }
    let output = cmd
        .args(["--min-reps", &budget.min_reps.to_string()])
        .args(["--max-reps", &budget.max_reps.to_string()])
        .args(["--target-ms", &budget.target.as_millis().to_string()])
        .args(files)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .map_err(|e| peer_error("starting python3", e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if peer == Peer::Torch && output.status.code() == Some(TORCH_MISSING) {
        return Ok(Outcome::Unavailable(stdout.trim().to_string()));
    }
    if !output.status.success() {
        return Err(peer_error(
            &peer.script().display().to_string(),
            format!(
                "{}{}",
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let times: Vec<f64> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v.get("file").is_some())
        .map(|v| {
            v["median_s"]
                .as_f64()
                .ok_or_else(|| peer_error("parsing the peer's output", &v))
        })
        .collect::<Result<_>>()?;
    if times.len() != files.len() {
        return Err(peer_error(
            peer.name(),
            format!("{} results for {} cases", times.len(), files.len()),
        ));
    }
    Ok(Outcome::Times(times))
}

fn peer_error(call: &str, e: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: "bench peer".into(),
        call: call.into(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::Suite;
    use crate::inputs::generate;
    use moemla_core::Op;

    #[test]
    fn peers_run_what_their_scripts_implement_and_nothing_large() {
        let quick = BenchCase::list(Suite::Quick, &Op::ALL, &[DType::BF16, DType::F32]);
        let names = |p: Peer| -> Vec<String> {
            quick
                .iter()
                .filter(|c| p.runs(c))
                .map(|c| c.to_string())
                .collect()
        };
        let numpy = names(Peer::Numpy);
        let torch = names(Peer::Torch);
        assert_eq!(numpy.len(), 7, "{numpy:?}");
        assert!(numpy.iter().any(|n| n.starts_with("moe_route")));
        assert!(numpy.iter().any(|n| n.starts_with("moe_experts fp8 w8a8")));
        assert_eq!(torch.len(), 5, "{torch:?}");
        assert!(!torch
            .iter()
            .any(|n| n.starts_with("moe_route") || n.contains("w8a8")));
        assert!(torch.iter().any(|n| n.starts_with("moe_experts fp8 w8a16")));
        // V3's 256 FP8 experts are generated on the device side: no case file.
        let big = BenchCase::Fp8Experts {
            w8a8: false,
            ue8m0: false,
            tokens: 1,
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
        };
        let inputs = generate(&big).unwrap();
        assert!(inputs.all_host().is_none());
        let dir = std::env::temp_dir().join(format!("moemla-peer-test-{}", std::process::id()));
        assert!(!write_case(&dir, &big, &inputs).unwrap());
        assert!(!dir.exists());
    }
}
