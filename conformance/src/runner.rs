//! Running cases on a backend: upload inputs, call the op through `moemla_core::ops`,
//! download, upcast to f32 and compare with the expected outputs.

use crate::case::{panic_message, Case, CaseFile, Params};
use crate::compare::{
    compare_bytes, compare_routing, compare_topk_indices, compare_values, Comparison, Routing,
};
use crate::report::{BackendSummary, DeviceSummary, Outcome, Report, Status};
use crate::spec::{spec, Rule};
use moemla_core::ops::{ExpertsInputs, RouteInputs, SparseDecodeInputs};
use moemla_core::{ops, Backend, DType, DeviceTensor, Error, ExpertWeight, HostTensor};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

/// Runs every case on `backend` and compares the results with the expected outputs.
///
/// Never stops early: a malformed case file is an error, a backend panic a failure; an
/// (op, dtype) the backend does not list in [`Backend::info`] (or an
/// [`Error::Unsupported`] from it) is `unsupported`; any other backend error is a failure
/// carrying the error's message. A case whose expected float outputs are all zeros
/// ([`Case::mistrusted`]) is `mistrusted` where it would pass.
///
/// ```no_run
/// # fn demo(backend: &dyn moemla_core::Backend) {
/// let cases = moemla_conformance::load_cases(&["conformance/golden"]);
/// let report = moemla_conformance::run(backend, &cases);
/// println!("{}", report.counts(None).line());
/// assert!(report.verdict(&[backend.name().to_string()]).ok);
/// # }
/// ```
pub fn run(backend: &dyn Backend, cases: &[CaseFile]) -> Report {
    let info = backend.info();
    let name = backend.name().to_string();
    let results = cases
        .iter()
        .map(|file| match file {
            Err(err) => malformed(&name, err),
            Ok(case) if !info.supports(case.op, case.dtype) => {
                let why = format!(
                    "`{name}` does not list {} {} as supported",
                    case.op, case.dtype
                );
                outcome(&name, case, Status::Unsupported, Some(why), Vec::new(), 0.0)
            }
            Ok(case) => run_guarded(backend, case),
        })
        .collect();
    Report {
        backends: vec![BackendSummary {
            name: name.clone(),
            available: true,
            detail: format!(
                "{} ({}); verification: {}",
                info.device, info.vendor, info.verification
            ),
            device: Some(DeviceSummary::of(&info)),
        }],
        results,
        ..Report::default()
    }
}

/// A report for a backend that could not be opened: every case `unavailable`, with the
/// reason (a malformed case file stays an error: the golden set is broken whatever runs
/// it).
pub fn run_unavailable(name: &str, reason: &str, cases: &[CaseFile]) -> Report {
    let results = cases
        .iter()
        .map(|file| {
            let message = Some(reason.to_string());
            match file {
                Ok(case) => outcome(name, case, Status::Unavailable, message, Vec::new(), 0.0),
                Err(err) => malformed(name, err),
            }
        })
        .collect();
    Report {
        backends: vec![BackendSummary {
            name: name.to_string(),
            available: false,
            detail: reason.to_string(),
            device: None,
        }],
        results,
        ..Report::default()
    }
}

/// An error outcome for a malformed case file.
fn malformed(backend: &str, err: &crate::CaseError) -> Outcome {
    Outcome {
        case: err.name.clone(),
        path: err.path.clone(),
        op: None,
        dtype: None,
        backend: backend.to_string(),
        status: Status::Error,
        max_abs: None,
        max_rel: None,
        worst_output: None,
        worst_index: None,
        worst_ratio: None,
        message: Some(err.to_string()),
        seconds: 0.0,
        comparisons: Vec::new(),
    }
}

/// Why a case did not produce comparable outputs.
enum Problem {
    /// The backend declined the call.
    Unsupported(String),
    /// The case's inputs or expected outputs do not fit the op (found only by running it).
    Malformed(String),
    /// Anything else: a backend error.
    Fail(String),
}

impl From<Error> for Problem {
    fn from(err: Error) -> Problem {
        match err {
            Error::Unsupported { .. } => Problem::Unsupported(err.to_string()),
            Error::Rank { .. }
            | Error::Dim { .. }
            | Error::DType { .. }
            | Error::Param { .. }
            | Error::Input { .. } => {
                Problem::Malformed(format!("inputs break the contract: {err}"))
            }
            other => Problem::Fail(other.to_string()),
        }
    }
}

/// Runs one well-formed case; a backend that panics fails the case instead of ending the
/// run.
fn run_guarded(backend: &dyn Backend, case: &Case) -> Outcome {
    let start = Instant::now();
    // The backend is only borrowed; a panic leaves nothing of ours half-updated.
    match std::panic::catch_unwind(AssertUnwindSafe(|| run_case(backend, case))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = format!("backend panicked: {}", panic_message(&*payload));
            let seconds = start.elapsed().as_secs_f64();
            outcome(
                backend.name(),
                case,
                Status::Fail,
                Some(message),
                Vec::new(),
                seconds,
            )
        }
    }
}

/// Runs one well-formed case.
fn run_case(backend: &dyn Backend, case: &Case) -> Outcome {
    let start = Instant::now();
    let result = execute(backend, case);
    let seconds = start.elapsed().as_secs_f64();
    let name = backend.name();
    match result {
        Err(Problem::Unsupported(msg)) => outcome(
            name,
            case,
            Status::Unsupported,
            Some(msg),
            Vec::new(),
            seconds,
        ),
        Err(Problem::Fail(msg)) => {
            outcome(name, case, Status::Fail, Some(msg), Vec::new(), seconds)
        }
        Err(Problem::Malformed(msg)) => {
            let msg = format!("malformed case {}: {msg}", case.path.display());
            outcome(name, case, Status::Error, Some(msg), Vec::new(), seconds)
        }
        Ok(comparisons) => {
            let failed: Vec<String> = comparisons
                .iter()
                .filter(|c| !c.passed)
                .map(|c| describe(case, c))
                .collect();
            let (status, message) = match &case.mistrusted {
                _ if !failed.is_empty() => (Status::Fail, Some(failed.join("; "))),
                Some(why) => (Status::Mistrusted, Some(why.clone())),
                None => (Status::Pass, None),
            };
            outcome(name, case, status, message, comparisons, seconds)
        }
    }
}

/// Builds an outcome; the error summary comes from `comparisons`.
fn outcome(
    backend: &str,
    case: &Case,
    status: Status,
    message: Option<String>,
    comparisons: Vec<Comparison>,
    seconds: f64,
) -> Outcome {
    let fold =
        |f: fn(&Comparison) -> Option<f64>| comparisons.iter().filter_map(f).reduce(f64::max);
    // The worst element: that of the first failing output, else of the output with the
    // largest absolute error.
    let worst = comparisons.iter().find(|c| !c.passed).or_else(|| {
        (comparisons.iter().filter(|c| c.max_abs.is_some())).max_by(|a, b| {
            a.max_abs
                .partial_cmp(&b.max_abs)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    Outcome {
        case: case.name.clone(),
        path: case.path.clone(),
        op: Some(case.op),
        dtype: Some(case.dtype),
        backend: backend.to_string(),
        status,
        max_abs: fold(|c| c.max_abs),
        max_rel: fold(|c| c.max_rel),
        worst_output: worst.map(|c| c.output.clone()),
        worst_index: worst.and_then(|c| c.worst_index.clone()),
        worst_ratio: (comparisons.iter().map(|c| c.worst_ratio)).reduce(f64::max),
        message,
        seconds,
        comparisons,
    }
}

/// One line about a failed comparison of `case`: counts, maxima, first and worst element.
fn describe(case: &Case, c: &Comparison) -> String {
    let bytes = (spec(case.op).outputs.iter())
        .any(|a| a.name == c.output && matches!(a.rule, Rule::U8 | Rule::RunOrU8));
    let mut s = format!("`{}`: {} of {} ", c.output, c.failed, c.checked);
    match c.tolerance {
        Some(t) => {
            s += &format!(
                "elements out of tolerance (atol {:e}, rtol {:e}), max abs {}, max rel {}",
                t.atol,
                t.rtol,
                num(c.max_abs),
                num(c.max_rel)
            )
        }
        None if bytes => s += "bytes differ",
        None => s += "rows differ",
    }
    if let Some(m) = &c.first_failure {
        s += &format!("; first at {:?}: {}", m.index, m.detail);
    }
    let first_index = c.first_failure.as_ref().map(|m| &m.index);
    if let Some(m) = (c.worst_failure.as_ref()).filter(|w| Some(&w.index) != first_index) {
        s += &format!("; worst at {:?}: {}", m.index, m.detail);
    }
    s
}

/// A number for messages (`-` when absent).
fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3e}"))
}

/// Uploads the inputs, runs the op, downloads and compares every expected output.
fn execute(backend: &dyn Backend, case: &Case) -> Result<Vec<Comparison>, Problem> {
    let up = |arg: &str| -> Result<Option<DeviceTensor>, Problem> {
        case.inputs
            .get(arg)
            .map(|t| backend.upload(t))
            .transpose()
            .map_err(Problem::from)
    };
    let req = |arg: &str| -> Result<DeviceTensor, Problem> {
        up(arg)?.ok_or_else(|| Problem::Malformed(format!("no `in.{arg}`")))
    };
    let down = |t: &DeviceTensor| backend.download(t).map_err(Problem::from);
    match &case.params {
        Params::MoeRoute(p) => {
            let (logits, bias) = (req("logits")?, up("bias")?);
            let (input_ids, tid2eid) = (up("input_ids")?, up("tid2eid")?);
            let inputs = RouteInputs {
                logits: &logits,
                bias: bias.as_ref(),
                input_ids: input_ids.as_ref(),
                tid2eid: tid2eid.as_ref(),
            };
            let out = ops::moe_route_with(backend, inputs, p)?;
            let names = ["topk_ids", "topk_weights"];
            let (got_ids, got_w) = keyed_output(
                case,
                names,
                &down(&out.topk_ids)?,
                &down(&out.topk_weights)?,
            )?;
            let (exp_ids, exp_w) = expected_keyed(case, names)?;
            let tol = tolerance(case, "topk_weights")?;
            let (ids, weights) = compare_routing(
                p.top_k,
                Routing {
                    ids: &got_ids,
                    weights: &got_w,
                },
                Routing {
                    ids: &exp_ids,
                    weights: &exp_w,
                },
                tol,
            );
            Ok(vec![ids, weights])
        }
        Params::MoeExperts(p) => {
            let (x, w13, w2) = (req("x")?, req("w13")?, req("w2")?);
            let (ids, weights) = (req("topk_ids")?, req("topk_weights")?);
            let (w13_scale, w2_scale) = (up("w13_scale")?, up("w2_scale")?);
            let mut inputs = ExpertsInputs::new(&x, &w13, &w2, &ids, &weights);
            inputs.w13_scale = w13_scale.as_ref();
            inputs.w2_scale = w2_scale.as_ref();
            let (shared_w13, shared_w2) = (up("shared_w13")?, up("shared_w2")?);
            inputs.shared_w13 = shared_w13.as_ref();
            inputs.shared_w2 = shared_w2.as_ref();
            let y = ops::moe_experts_with(backend, inputs, p)?;
            // Again with every weight laid out by `pack_expert_weights`, as an engine loads
            // them: the backend's own layout must compute the same numbers.
            let pack = |w: &DeviceTensor, kind| ops::pack_expert_weights(backend, w, kind);
            let (w13p, w2p) = (
                pack(&w13, ExpertWeight::GateUp)?,
                pack(&w2, ExpertWeight::Down)?,
            );
            let shared = match (&shared_w13, &shared_w2) {
                (Some(a), Some(b)) => {
                    Some((pack(a, ExpertWeight::GateUp)?, pack(b, ExpertWeight::Down)?))
                }
                _ => None,
            };
            let plain = float_output(case, "y", &down(&y)?)?;
            let unchanged = w13p.same_buffer(&w13)
                && w2p.same_buffer(&w2)
                && match (&shared, &shared_w13, &shared_w2) {
                    (Some((a, b)), Some(sa), Some(sb)) => a.same_buffer(sa) && b.same_buffer(sb),
                    _ => true,
                };
            if unchanged {
                return Ok(vec![plain]); // The backend keeps the contract's layout.
            }
            let mut packed_inputs = ExpertsInputs {
                w13: &w13p,
                w2: &w2p,
                ..inputs
            };
            if let Some((a, b)) = &shared {
                packed_inputs.shared_w13 = Some(a);
                packed_inputs.shared_w2 = Some(b);
            }
            let y_packed = ops::moe_experts_with(backend, packed_inputs, p)?;
            let mut packed = float_output(case, "y", &down(&y_packed)?)?;
            packed.output = "y (packed weights)".to_string();
            Ok(vec![plain, packed])
        }
        Params::MlaDecode(p) => {
            let (q, kv) = (req("q")?, req("kv_cache")?);
            let (table, lens) = (req("block_table")?, req("cache_seqlens")?);
            let out = ops::mla_decode(backend, &q, &kv, &table, &lens, p)?;
            let o = float_output(case, "o", &down(&out.o)?)?;
            let lse = float_output(case, "lse", &down(&out.lse)?)?;
            Ok(vec![o, lse])
        }
        Params::MlaKvQuantize(p) => {
            let kv = req("kv")?;
            let out = ops::mla_kv_quantize(backend, &kv, p)?;
            Ok(vec![byte_output(case, "kv_fp8", &down(&out)?)?])
        }
        Params::MlaSparseDecode(p) => {
            let (q, kv, indices) = (req("q")?, req("kv_cache")?, req("indices")?);
            let (topk_length, attn_sink) = (up("topk_length")?, up("attn_sink")?);
            let mut inputs = SparseDecodeInputs::new(&q, &kv, &indices);
            inputs.topk_length = topk_length.as_ref();
            inputs.attn_sink = attn_sink.as_ref();
            let out = ops::mla_sparse_decode(backend, inputs, p)?;
            let o = float_output(case, "o", &down(&out.o)?)?;
            let lse = float_output(case, "lse", &down(&out.lse)?)?;
            Ok(vec![o, lse])
        }
        Params::DsaIndexerTopk(p) => {
            let (q, weights, k_cache) = (req("q")?, req("weights")?, req("k_cache")?);
            let (table, lens) = (req("block_table")?, req("cache_seqlens")?);
            let out = ops::dsa_indexer_topk(backend, &q, &weights, &k_cache, &table, &lens, p)?;
            let names = ["topk_indices", "topk_scores"];
            let (got_idx, got_sc) = keyed_output(
                case,
                names,
                &down(&out.topk_indices)?,
                &down(&out.topk_scores)?,
            )?;
            let (exp_idx, exp_sc) = expected_keyed(case, names)?;
            let tol = tolerance(case, "topk_scores")?;
            let (idx, scores) = compare_topk_indices(
                p.top_k,
                Routing {
                    ids: &got_idx,
                    weights: &got_sc,
                },
                Routing {
                    ids: &exp_idx,
                    weights: &exp_sc,
                },
                tol,
            );
            Ok(vec![idx, scores])
        }
        Params::MlaCacheWrite(p) => {
            let (kv, slots, mut cache) = (req("kv")?, req("slot_mapping")?, req("kv_cache")?);
            ops::mla_cache_write(backend, &kv, &slots, &mut cache, p)?;
            Ok(vec![cache_output(case, "kv_cache", &down(&cache)?)?])
        }
    }
}

/// A backend's (ids, values) output pair, checked against the expected shapes.
fn keyed_output(
    case: &Case,
    [ids_arg, values_arg]: [&str; 2],
    ids: &HostTensor,
    values: &HostTensor,
) -> Result<(Vec<i32>, Vec<f32>), Problem> {
    same_shape(case, ids_arg, ids)?;
    same_shape(case, values_arg, values)?;
    let ids = ids.to_i32_vec().map_err(Problem::from)?;
    let values = values.to_f32_vec().map_err(Problem::from)?;
    Ok((ids, values))
}

/// The case's expected (ids, values) output pair.
fn expected_keyed(
    case: &Case,
    [ids_arg, values_arg]: [&str; 2],
) -> Result<(Vec<i32>, Vec<f32>), Problem> {
    let ids = expected(case, ids_arg)?
        .to_i32_vec()
        .map_err(Problem::from)?;
    let values = (expected(case, values_arg)?.to_f32_vec()).map_err(Problem::from)?;
    Ok((ids, values))
}

/// Compares an in/out cache (run dtype or U8) with the expected one byte for byte.
fn cache_output(case: &Case, arg: &str, got: &HostTensor) -> Result<Comparison, Problem> {
    same_shape(case, arg, got)?;
    let exp = expected(case, arg)?;
    if got.dtype() != exp.dtype() {
        return Err(Problem::Malformed(format!(
            "`out.{arg}` is {}, the op's cache is {}",
            exp.dtype(),
            got.dtype()
        )));
    }
    // Positions name bytes: the last dim counted in bytes.
    let mut dims = exp.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last *= exp.dtype().size_in_bytes();
    }
    let shape = moemla_core::Shape::from(&dims[..]);
    Ok(compare_bytes(arg, &shape, got.as_bytes(), exp.as_bytes()))
}

/// Compares a U8 output byte for byte.
fn byte_output(case: &Case, arg: &str, got: &HostTensor) -> Result<Comparison, Problem> {
    same_shape(case, arg, got)?;
    let exp = expected(case, arg)?;
    if got.dtype() != DType::U8 || exp.dtype() != DType::U8 {
        return Err(Problem::Malformed(format!(
            "`out.{arg}` must be U8 on both sides, got {} (expected {})",
            got.dtype(),
            exp.dtype()
        )));
    }
    Ok(compare_bytes(
        arg,
        exp.shape(),
        got.as_bytes(),
        exp.as_bytes(),
    ))
}

/// The case's expected output `arg` (a loaded case always has it; a hand-built one may
/// not).
fn expected<'a>(case: &'a Case, arg: &str) -> Result<&'a HostTensor, Problem> {
    (case.expected.get(arg)).ok_or_else(|| Problem::Malformed(format!("no `out.{arg}`")))
}

/// The tolerance of the case's float output `arg`.
fn tolerance(case: &Case, arg: &str) -> Result<crate::Tolerance, Problem> {
    (case.tolerances.get(arg).copied())
        .ok_or_else(|| Problem::Malformed(format!("no tolerance for `out.{arg}`")))
}

/// A downloaded output must have the shape of the case's expected output.
fn same_shape(case: &Case, arg: &str, got: &HostTensor) -> Result<(), Problem> {
    let exp = expected(case, arg)?;
    if exp.shape() == got.shape() {
        Ok(())
    } else {
        Err(Problem::Malformed(format!(
            "`out.{arg}` has shape {}, but the op returns {}",
            exp.shape(),
            got.shape()
        )))
    }
}

/// Upcasts a float output to f32 and compares it elementwise.
fn float_output(case: &Case, arg: &str, got: &HostTensor) -> Result<Comparison, Problem> {
    same_shape(case, arg, got)?;
    let got = got.to_f32_vec().map_err(Problem::from)?;
    let exp = expected(case, arg)?;
    let want = exp.to_f32_vec().map_err(Problem::from)?;
    Ok(compare_values(
        arg,
        exp.shape(),
        &got,
        &want,
        tolerance(case, arg)?,
    ))
}

/// For a backend crate's own tests: runs the committed golden set
/// ([`crate::golden::committed_dir`]) on `backend` and panics, printing the parity matrix,
/// if any case fails — or, with `require_all`, if any case is unsupported.
///
/// ```no_run
/// # fn demo(backend: &dyn moemla_core::Backend) {
/// moemla_conformance::assert_committed_set_passes(backend, true);
/// # }
/// ```
pub fn assert_committed_set_passes(backend: &dyn Backend, require_all: bool) {
    let cases = crate::load_cases(&[crate::golden::committed_dir()]);
    let report = run(backend, &cases);
    let required = if require_all {
        vec![backend.name().to_string()]
    } else {
        Vec::new()
    };
    let verdict = report.verdict(&required);
    assert!(
        verdict.ok,
        "{}{}\n{}",
        crate::render(&report),
        report.counts(None).line(),
        verdict.reasons.join("\n")
    );
}
