//! Golden case files: finding them, reading one, and checking it is well formed.
//!
//! A case is one `.safetensors` file (format: `docs/conformance.md`):
//! `in.<arg>` inputs, `out.<arg>` expected outputs, and `__metadata__` with `op`, `params`
//! (JSON), optional `tolerance` (JSON) and `source`. Anything that does not fit is a
//! [`CaseError`] naming the file; the runner reports it as a failure and goes on.

use crate::file::read_case_file;
use crate::spec::spec;
use crate::tolerance::Tolerance;
use moemla_core::{
    CacheWriteParams, DType, ExpertsParams, HostTensor, IndexerParams, KvFormat, KvQuantizeParams,
    MlaDecodeParams, Op, RouteParams, SparseDecodeParams,
};
use safetensors::SafeTensors;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// An op's parameters, parsed from the case's `params` JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    /// `moe_route` parameters.
    MoeRoute(RouteParams),
    /// `moe_experts` parameters.
    MoeExperts(ExpertsParams),
    /// `mla_decode` parameters.
    MlaDecode(MlaDecodeParams),
    /// `mla_kv_quantize` parameters.
    MlaKvQuantize(KvQuantizeParams),
    /// `mla_sparse_decode` parameters.
    MlaSparseDecode(SparseDecodeParams),
    /// `dsa_indexer_topk` parameters.
    DsaIndexerTopk(IndexerParams),
    /// `mla_cache_write` parameters.
    MlaCacheWrite(CacheWriteParams),
}

/// One well-formed golden case, in host memory.
#[derive(Clone, Debug)]
pub struct Case {
    /// Path relative to the golden directory it was found under, `/`-separated
    /// (e.g. `mla_decode/bf16/v3_b4_sq2.safetensors`).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The op.
    pub op: Op,
    /// The run dtype: the dtype of `in.logits`, `in.x`, `in.q` or `in.kv`.
    pub dtype: DType,
    /// The op's parameters.
    pub params: Params,
    /// Why the case proves nothing, if every expected float output is all zeros
    /// (benchdnn's "mistrusted"): a pass on it is reported as `mistrusted`, not `pass`.
    pub mistrusted: Option<String>,
    /// Inputs by argument name (without `in.`).
    pub inputs: BTreeMap<String, HostTensor>,
    /// Expected outputs by argument name (without `out.`): floats F32, ids I32, bytes U8.
    pub expected: BTreeMap<String, HostTensor>,
    /// The tolerance of every float output: the default for the op and run dtype
    /// ([`Tolerance::default_for_case`]) unless the case tightens it.
    pub tolerances: BTreeMap<String, Tolerance>,
    /// Who or what computed the expected values, if the file says.
    pub source: Option<String>,
}

/// A case file that cannot be used, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseError {
    /// Path relative to its golden directory (or the path itself for a directory error).
    pub name: String,
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.as_os_str().is_empty() {
            return write!(f, "malformed case (empty path): {}", self.message);
        }
        write!(
            f,
            "malformed case {}: {}",
            self.path.display(),
            self.message
        )
    }
}

impl std::error::Error for CaseError {}

/// A case file as loaded: the case, or why it is malformed.
pub type CaseFile = Result<Case, CaseError>;

/// The golden root a path lies in and the path's place in it (`/`-separated, ending in
/// `/` unless empty): a path at or below a folder named after an op (`moe_route`) belongs
/// to the root above the last such folder, so pointing at a subfolder keeps the IDs the
/// whole set gives its cases. Any other path is a root itself.
pub fn golden_root(path: &Path) -> (PathBuf, String) {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let parts: Vec<&std::ffi::OsStr> = abs.iter().collect();
    let at = parts
        .iter()
        .rposition(|p| p.to_str().is_some_and(|p| Op::from_name(p).is_some()));
    match at {
        Some(at) if at > 0 => {
            let root: PathBuf = parts[..at].iter().collect();
            let rel: String = (parts[at..].iter())
                .map(|p| format!("{}/", p.to_string_lossy()))
                .collect();
            (root, rel)
        }
        _ => (path.to_path_buf(), String::new()),
    }
}

/// Loads the cases of several golden roots (directories or case files, as
/// [`load_cases`]). When they lie in more than one root ([`golden_root`]: a subfolder or
/// a file of a set belongs to that set's root), each case ID gets its root's name as a
/// prefix, `<name>:<path in the root>`: the root folder's own name (`golden`), with `#2`,
/// `#3` appended to a name another root already has.
pub fn load_roots<P: AsRef<Path>>(roots: &[P]) -> Vec<CaseFile> {
    let bases: Vec<PathBuf> = (roots.iter())
        .map(|r| {
            let (base, _) = golden_root(r.as_ref());
            std::path::absolute(&base).unwrap_or(base)
        })
        .collect();
    let mut names: Vec<(PathBuf, String)> = Vec::new();
    for base in &bases {
        if names.iter().any(|(b, _)| b == base) {
            continue;
        }
        let name = base.file_name().map_or_else(
            || "golden".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let taken = |n: &str| names.iter().any(|(_, m)| m == n);
        let mut unique = name.clone();
        let mut k = 1;
        while taken(&unique) {
            k += 1;
            unique = format!("{name}#{k}");
        }
        names.push((base.clone(), unique));
    }
    if names.len() <= 1 {
        return load_cases(roots);
    }
    let mut out = Vec::new();
    for (root, base) in roots.iter().zip(&bases) {
        let name = &names
            .iter()
            .find(|(b, _)| b == base)
            .expect("named above")
            .1;
        for mut file in load_cases(&[root]) {
            match &mut file {
                Ok(case) => case.name = format!("{name}:{}", case.name),
                Err(err) => err.name = format!("{name}:{}", err.name),
            }
            out.push(file);
        }
    }
    out
}

/// Loads every `.safetensors` file under each of `dirs`, recursively, sorted by relative
/// path within each directory. A path that is not a directory is loaded as a single case.
/// Each case's name (its ID) is its path relative to its golden root ([`golden_root`]).
///
/// Never fails as a whole and never panics: a missing directory, a directory without any
/// case, and each malformed file (including one whose loading panicked) come back as an
/// `Err` entry, so a run can never pass vacuously.
pub fn load_cases<P: AsRef<Path>>(dirs: &[P]) -> Vec<CaseFile> {
    let mut cases = Vec::new();
    for dir in dirs {
        let dir = dir.as_ref();
        let dir_error = |message: String| CaseError {
            name: dir.display().to_string(),
            path: dir.to_path_buf(),
            message,
        };
        if dir.as_os_str().is_empty() {
            cases.push(Err(dir_error(
                "an empty golden path names no directory or file".into(),
            )));
            continue;
        }
        match std::fs::metadata(dir) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                cases.push(Err(dir_error("golden directory does not exist".into())));
                continue;
            }
            Ok(meta) if meta.is_dir() => {}
            // A file, or something that is neither: `load_case` says which.
            _ => {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                let parent = dir.parent().map_or((PathBuf::new(), String::new()), |p| {
                    if p.as_os_str().is_empty() {
                        golden_root(Path::new("."))
                    } else {
                        golden_root(p)
                    }
                });
                let name = format!("{}{}", parent.1, name.unwrap_or_default());
                cases.push(load_guarded(dir, &name));
                continue;
            }
        }
        let mut found = Vec::new();
        let (_, prefix) = golden_root(dir);
        if let Err(err) = walk(dir, &prefix, &mut found) {
            cases.push(Err(dir_error(format!("cannot list: {err}"))));
            continue;
        }
        if found.is_empty() {
            cases.push(Err(dir_error("no .safetensors case files in it".into())));
        }
        found.sort();
        cases.extend(found.iter().map(|(name, path)| load_guarded(path, name)));
    }
    cases
}

/// Collects `(relative name, path)` of every `.safetensors` entry under `dir` (links to
/// directories are not followed; whatever the entry is, [`load_case`] decides whether it
/// is a readable case).
fn walk(dir: &Path, prefix: &str, found: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            walk(&path, &format!("{name}/"), found)?;
        } else if name.ends_with(".safetensors") {
            found.push((name, path));
        }
    }
    Ok(())
}

/// [`load_case`], with a panic while loading reported as a malformed case (the last line of
/// defence: loading is written not to panic).
fn load_guarded(path: &Path, name: &str) -> CaseFile {
    std::panic::catch_unwind(|| load_case(path, name)).unwrap_or_else(|payload| {
        Err(CaseError {
            name: name.to_string(),
            path: path.to_path_buf(),
            message: format!("loading it panicked: {}", panic_message(&*payload)),
        })
    })
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    (payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Reads and checks one case file; `name` is its path relative to its golden directory.
///
/// Only a regular file (or a link to one) of at most [`crate::MAX_CASE_BYTES`] whose size
/// is exactly what its safetensors header describes is read; anything else is a
/// [`CaseError`] before its data is touched.
pub fn load_case(path: &Path, name: &str) -> CaseFile {
    let fail = |message: String| CaseError {
        name: name.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let bytes = read_case_file(path).map_err(fail)?;
    parse(&bytes, path, name).map_err(fail)
}

/// Parses a case from the bytes of its file.
fn parse(bytes: &[u8], path: &Path, name: &str) -> Result<Case, String> {
    let bad_file = |e| format!("not a valid safetensors file: {e}");
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad_file)?;
    let st = SafeTensors::deserialize(bytes).map_err(bad_file)?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);
    let get = |key: &str| meta.get(key).map(String::as_str);

    let op_name = get("op").ok_or("`__metadata__` has no `op`")?;
    let op = Op::from_name(op_name).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        format!(
            "unknown op `{op_name}` (expected one of {})",
            names.join(", ")
        )
    })?;
    let params_json = get("params").ok_or("`__metadata__` has no `params`")?;
    let params = parse_params(op, params_json)
        .map_err(|e| format!("bad `params` JSON for {op}: {e} (in {params_json})"))?;

    let (inputs, expected) = read_tensors(&st, op)?;
    let spec = spec(op);
    let run_arg = spec.inputs[0].name;
    let dtype = inputs
        .get(run_arg)
        .ok_or_else(|| format!("missing tensor `in.{run_arg}`"))?
        .dtype();
    if !dtype.is_float() {
        return Err(format!(
            "`in.{run_arg}` is {dtype}; the run dtype must be F32, F16 or BF16"
        ));
    }
    let io = [
        ("in", spec.inputs, &inputs),
        ("out", spec.outputs, &expected),
    ];
    for (prefix, args, tensors) in io {
        for arg in args {
            match tensors.get(arg.name) {
                None if arg.required => {
                    return Err(format!("missing tensor `{prefix}.{}`", arg.name))
                }
                Some(t) if !arg.rule.accepts(dtype, t.dtype()) => {
                    return Err(format!(
                        "tensor `{prefix}.{}` must be {}, got {}",
                        arg.name,
                        arg.rule.describe(dtype),
                        t.dtype()
                    ))
                }
                _ => {}
            }
        }
    }
    for (arg, t) in &expected {
        check_no_nan(arg, t)?;
    }
    if let Params::MoeRoute(p) = &params {
        if let (Some(logits), Some(ids)) = (inputs.get("logits"), expected.get("topk_ids")) {
            check_top_k(logits, ids, p.top_k)?;
            check_distinct_ids(ids, p.top_k, "topk_ids")?;
        }
    }
    if let (Params::DsaIndexerTopk(p), Some(idx)) = (&params, expected.get("topk_indices")) {
        check_indexer_top_k(idx, p.top_k)?;
        check_distinct_ids(idx, p.top_k, "topk_indices")?;
    }
    let default = Tolerance::default_for_params(op, dtype, &params);
    let tolerances = tolerances(op, dtype, default, get("tolerance"))?;
    Ok(Case {
        name: name.to_string(),
        path: path.to_path_buf(),
        op,
        dtype,
        params,
        mistrusted: mistrusted(&expected)?,
        inputs,
        expected,
        tolerances,
        source: get("source").map(str::to_string),
    })
}

/// Parses `params` into the op's parameter struct.
fn parse_params(op: Op, json: &str) -> Result<Params, String> {
    match op {
        Op::MoeRoute => typed(json, &RouteParams::deepseek_v3()).map(Params::MoeRoute),
        Op::MoeExperts => typed(json, &ExpertsParams::default()).map(Params::MoeExperts),
        Op::MlaDecode => typed(json, &MlaDecodeParams::deepseek_v3()).map(Params::MlaDecode),
        Op::MlaKvQuantize => typed(
            json,
            &KvQuantizeParams {
                kv_format: KvFormat::Fp8DsV32,
            },
        )
        .map(Params::MlaKvQuantize),
        Op::MlaSparseDecode => {
            typed(json, &SparseDecodeParams::deepseek_v32()).map(Params::MlaSparseDecode)
        }
        Op::DsaIndexerTopk => typed(
            json,
            &IndexerParams {
                top_k: 2048,
                causal: true,
            },
        )
        .map(Params::DsaIndexerTopk),
        Op::MlaCacheWrite => typed(json, &CacheWriteParams::default()).map(Params::MlaCacheWrite),
    }
}

/// Parses `json` as `P`. When that fails, names the parameter at fault: each given field is
/// put in place of the same field of `valid` (a known-good value), and the first one that
/// alone breaks it is reported with its value.
fn typed<P: Serialize + DeserializeOwned>(json: &str, valid: &P) -> Result<P, String> {
    let err = match serde_json::from_str::<P>(json) {
        Ok(p) => return Ok(p),
        Err(err) => err,
    };
    let given = serde_json::from_str::<serde_json::Map<String, Value>>(json).ok();
    let base = serde_json::to_value(valid).ok();
    let culprit = given.zip(base).and_then(|(given, base)| {
        given.into_iter().find_map(|(key, value)| {
            let mut probe = base.clone();
            probe.as_object_mut()?.insert(key.clone(), value.clone());
            let err = serde_json::from_value::<P>(probe).err()?;
            Some(format!("parameter `{key}` = {value}: {err}"))
        })
    });
    Err(culprit.unwrap_or_else(|| err.to_string()))
}

type Tensors = BTreeMap<String, HostTensor>;

/// Splits the file's tensors into inputs and expected outputs; unknown names are errors.
fn read_tensors(st: &SafeTensors<'_>, op: Op) -> Result<(Tensors, Tensors), String> {
    let spec = spec(op);
    let (mut inputs, mut expected) = (Tensors::new(), Tensors::new());
    for (full, view) in st.tensors() {
        let (map, arg) = match full.split_once('.') {
            Some(("in", arg)) if spec.inputs.iter().any(|a| a.name == arg) => (&mut inputs, arg),
            Some(("out", arg)) if spec.outputs.iter().any(|a| a.name == arg) => {
                (&mut expected, arg)
            }
            _ => {
                let known: Vec<String> = (spec.inputs.iter().map(|a| format!("in.{}", a.name)))
                    .chain(spec.outputs.iter().map(|a| format!("out.{}", a.name)))
                    .collect();
                return Err(format!(
                    "unexpected tensor `{full}` ({op} takes {})",
                    known.join(", ")
                ));
            }
        };
        let stored = view.dtype().to_string();
        let dtype = DType::from_name(&stored)
            .ok_or_else(|| format!("tensor `{full}` has dtype {stored}, which no op uses"))?;
        let mut data = Vec::new();
        data.try_reserve_exact(view.data().len()).map_err(|_| {
            format!(
                "tensor `{full}`: cannot allocate {} bytes",
                view.data().len()
            )
        })?;
        data.extend_from_slice(view.data());
        let t = HostTensor::from_bytes(view.shape(), dtype, data)
            .map_err(|e| format!("tensor `{full}`: {e}"))?;
        map.insert(arg.to_string(), t);
    }
    Ok((inputs, expected))
}

/// Rejects an expected float output holding NaN: NaN never passes, so no backend could.
fn check_no_nan(arg: &str, t: &HostTensor) -> Result<(), String> {
    if t.dtype() != DType::F32 {
        return Ok(());
    }
    let values = t.to_f32_vec().map_err(|e| e.to_string())?;
    if let Some(at) = values.iter().position(|v| v.is_nan()) {
        return Err(format!(
            "expected output `out.{arg}` holds NaN at {:?}; NaN never passes",
            t.shape().unravel(at)
        ));
    }
    Ok(())
}

/// Why a case proves nothing (benchdnn's "mistrusted"), if it does not: every expected
/// float output is all zeros, so a backend that writes nothing would pass it. One
/// all-zero output beside another that is not (an empty attention range: `o` zeros, `lse`
/// `-inf`) is an ordinary case.
fn mistrusted(expected: &Tensors) -> Result<Option<String>, String> {
    let floats: Vec<(&String, &HostTensor)> = (expected.iter())
        .filter(|(_, t)| t.dtype() == DType::F32)
        .collect();
    for (_, t) in &floats {
        if t.to_f32_vec()
            .map_err(|e| e.to_string())?
            .iter()
            .any(|&v| v != 0.0)
        {
            return Ok(None);
        }
    }
    if floats.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = floats.iter().map(|(arg, _)| format!("out.{arg}")).collect();
    Ok(Some(format!(
        "every expected float output ({}) is all zeros: a backend that computes nothing \
         would pass it",
        names.join(", ")
    )))
}

/// `top_k` must fit the case: `1 <= top_k <= E` (from `in.logits` [T, E]) and the rows of
/// the expected `out.topk_ids` [T, top_k] must hold `top_k` ids.
fn check_top_k(logits: &HostTensor, ids: &HostTensor, top_k: usize) -> Result<(), String> {
    if let [_, experts] = logits.dims() {
        if top_k == 0 || top_k > *experts {
            return Err(format!(
                "bad parameter `top_k`: must be in 1..=E ({experts}, from `in.logits`), got \
                 {top_k}"
            ));
        }
    }
    match ids.dims() {
        [_, k] if *k == top_k => Ok(()),
        _ => Err(format!(
            "bad parameter `top_k` ({top_k}) for the expected `out.topk_ids` of shape {}: \
             each of its rows must hold top_k ids",
            ids.shape()
        )),
    }
}

/// Each row of an expected id output (`topk_ids`, `topk_indices`) must hold distinct
/// values, -1 (`dsa_indexer_topk`'s padding) excepted: rows compare as sets.
fn check_distinct_ids(ids: &HostTensor, top_k: usize, arg: &str) -> Result<(), String> {
    let values = ids.to_i32_vec().map_err(|e| e.to_string())?;
    for (t, row) in values.chunks(top_k.max(1)).enumerate() {
        if let Some(j) = (1..row.len()).find(|&j| row[j] != -1 && row[..j].contains(&row[j])) {
            let what = if arg == "topk_ids" { "expert" } else { "slot" };
            return Err(format!(
                "expected `out.{arg}` row {t} names {what} {} twice: {row:?}",
                row[j]
            ));
        }
    }
    Ok(())
}

/// The expected `topk_indices` must be [B, Sq, top_k].
fn check_indexer_top_k(idx: &HostTensor, top_k: usize) -> Result<(), String> {
    match idx.dims() {
        [_, _, k] if *k == top_k && top_k >= 1 => Ok(()),
        _ => Err(format!(
            "bad parameter `top_k` ({top_k}) for the expected `out.topk_indices` of shape {}: \
             it must be [B, Sq, top_k] with top_k >= 1",
            idx.shape()
        )),
    }
}

/// The tolerance of each float output: `default` (the op's, for the run dtype and
/// parameters), tightened by the case.
fn tolerances(
    op: Op,
    dtype: DType,
    default: Tolerance,
    json: Option<&str>,
) -> Result<BTreeMap<String, Tolerance>, String> {
    let mut out: BTreeMap<String, Tolerance> = spec(op)
        .outputs
        .iter()
        .filter(|a| a.rule.is_float_output())
        .map(|a| (a.name.to_string(), default))
        .collect();
    let Some(json) = json else {
        return Ok(out);
    };
    let given: BTreeMap<String, Tolerance> =
        serde_json::from_str(json).map_err(|e| format!("bad `tolerance` JSON: {e} (in {json})"))?;
    for (arg, tol) in given {
        let Some(slot) = out.get_mut(&arg) else {
            return Err(format!(
                "`tolerance` names `{arg}`, which is not a float output of {op}"
            ));
        };
        if !tol.tightens(&default) {
            return Err(format!(
                "`tolerance` for `{arg}` (atol {}, rtol {}) is looser than the {dtype} \
                 default (atol {}, rtol {}): a case may only tighten it",
                tol.atol, tol.rtol, default.atol, default.rtol
            ));
        }
        *slot = tol;
    }
    Ok(out)
}
