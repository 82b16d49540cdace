//! moe_experts -> aclnnMoeInitRoutingV2 + aclnnGroupedMatmulV4 (gate/up) + aclnnSwiGlu +
//! aclnnGroupedMatmulV4 (down) + aclnnMoeFinalizeRoutingV2, with aclnnCast around them.
//!
//! 1. topk_ids are copied to the host and checked (`moemla_core::indices::check_topk_ids`):
//!    CANN's routing ops do not bounds-check ids.
//! 2. A slot with id -1 ("no expert") or weight 0 (+0 or -0) must contribute nothing, even
//!    when an expert's output is NaN or inf; CANN has no "none" id, and
//!    MoeFinalizeRoutingV2 multiplies every slot's expert output by its scale (0 * NaN =
//!    NaN). So, on the host, such a slot is parked on an extra expert E that no GEMM
//!    computes (weight set to 0): InitRoutingV2 runs with expertNum E + 1, sorts the parked
//!    slots after every real one, i.e. into the last rows of the expanded matrix, and those
//!    rows are zeroed (aclnnInplaceZero) before the combine, which then adds 0 * 0.
//! 3. InitRoutingV2 (dropless, cumsum counts) -> expanded x [T*k, H], expandedRowIdx, per
//!    expert cumsum [E + 1] (cast I32 -> I64; its first E entries are GroupedMatmulV4's
//!    groupList, so the parked rows lie past the last group).
//! 4. GroupedMatmulV4, m-axis groups: expanded x @ `W13[e]^T`. Our w13 is [E, 2I, H]; GMM wants
//!    weight [E, K=H, N=2I]: passed as a strided view (strides [2I*H, 1, H]), the transposed
//!    weight layout GMM documents ("tensor转置"), no copy. Same for w2 [E, H, I] -> [E, I, H].
//!    GMM's limits (ops-transformer `gmm/grouped_matmul/op_host/op_api/aclnn_grouped_matmul.cpp`:
//!    at most 1024 groups, x's K <= 65535; with transposed weights N is not limited) are
//!    checked first and reported as Unsupported: E <= 1024, H and I <= 65535.
//! 5. SwiGlu(dim -1): silu(first half = gate W1) * second half (up W3), as w13 is ordered.
//! 6. Down projection cast to F32, parked rows zeroed, MoeFinalizeRoutingV2 (dropPadMode 2,
//!    F32 scales = topk_weights) in F32, then cast to the run dtype: the weighted combine
//!    runs in f32.
//! 7. With `swiglu_limit` c (v2), between steps 4 and 5: the gate half becomes min(g, c)
//!    and the up half clamp(u, -c, c), each by aclnnClamp (`y = max(min(x, max), min)`, a
//!    null bound is no bound: CANN aolapi aclnnClamp.md) into a temporary, copied back into
//!    the strided half by aclnnInplaceCopy; shared experts get the same clamp.
//! 8. Shared experts (v2, S dense experts every token goes through with weight 1): x is
//!    copied S times into [S*T, H] (aclnnInplaceCopy), the same gate/up GEMM + SwiGlu + down
//!    GEMM run with S groups of T rows (cumsum T, 2T, ..., ST) over shared_w13 / shared_w2,
//!    the result is cast to F32, and a second MoeFinalizeRoutingV2 adds it to the routed
//!    sum: token t's slot s reads row s*T + t with scale 1, and x1Optional (the op's skip
//!    input, `moe/moe_finalize_routing_v2/README.md`: out = x1 + x2 + sum_k scales * rows)
//!    is the routed sum. Then the one cast to the run dtype.
//! 9. FP8 weights (v2, w8a16: `activation_quant` "none"): before step 3, w13 and w2 are
//!    dequantized into run-dtype temporaries ([`dequantize`]: e4m3 bytes -> INT32 ->
//!    aclnnIndexSelect in the 256-entry value table, times the 128x128 block scales spread
//!    by aclnnIndexSelect, aclnnMul, aclnnCast): Atlas A2/A3 have no FP8 matmul and
//!    GroupedMatmulV4's antiquant takes INT4/INT8 per channel/group, not e4m3 blocks. The
//!    weights are held in the run dtype (F16/BF16 round the dequantized value; F32 exact).
//!    w8a8 (`fp8_block128`) stays Unsupported.

use crate::acl::{acl_dtype, AclTensor, ACL_FLOAT, ACL_UINT8};
use crate::buffer::DevMem;
use crate::device::Device;
use crate::loader::OpApi;
use crate::ops::{compose, i32s, require_ops, unsupported};
use crate::AscendBackend;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{indices, DType, DeviceTensor, Op, Result};
use std::sync::Arc;

/// ACL_INT64 (AscendCL "aclDataType").
const ACL_INT64: i32 = 9;
/// GroupedMatmulV4's most groups (aclnn_grouped_matmul.cpp MAX_GROUP_LIST_SIZE_TENSOR).
const MAX_GROUPS: usize = 1024;
/// GroupedMatmulV4's largest K (aclnn_grouped_matmul.cpp MAX_INNER_AXIS: x's last dim).
const MAX_K: usize = 65535;

/// Contract gaps, for `info().notes`.
pub const NOTES: [&str; 6] = [
    "moe_experts: aclnnMoeInitRoutingV2 + aclnnGroupedMatmulV4 (w13/w2 as transposed strided views) + aclnnSwiGlu + aclnnGroupedMatmulV4 + aclnnMoeFinalizeRoutingV2 (combine in f32)",
    "moe_experts swiglu_limit (v2): gate = min(g, c) and up = clamp(u, -c, c) by aclnnClamp on the gate/up GEMM output (run dtype) before aclnnSwiGlu",
    "moe_experts FP8 weights (v2, w8a16 only): e4m3 weights dequantized to the run dtype first (aclnnCast UINT8->INT32 + aclnnIndexSelect in an e4m3 value table, block scales spread by aclnnIndexSelect, aclnnMul, aclnnCast), then the same pipeline; w8a8 (fp8_block128 activations) is Unsupported",
    "moe_experts shared experts (v2): x repeated per shared expert (aclnnInplaceCopy), the same GroupedMatmulV4 + SwiGlu + GroupedMatmulV4 with one group per shared expert, added to the routed f32 sum by a second aclnnMoeFinalizeRoutingV2 (x1Optional = the routed sum, scale 1), then rounded once",
    "moe_experts: slots with id -1 or weight 0 are parked on an extra expert no GEMM computes and their rows zeroed (aclnnInplaceZero) before the combine, so they contribute nothing even when an expert's output is NaN/inf",
    "moe_experts: Unsupported beyond aclnnGroupedMatmulV4's limits: E > 1024 groups, H or I > 65535 (its K)",
];

/// Whether the loaded op libraries have what moe_experts needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnMoeInitRoutingV2GetWorkspaceSize.is_some()
        && ops.aclnnMoeInitRoutingV2.is_some()
        && ops.aclnnGroupedMatmulV4GetWorkspaceSize.is_some()
        && ops.aclnnGroupedMatmulV4.is_some()
        && ops.aclnnSwiGluGetWorkspaceSize.is_some()
        && ops.aclnnSwiGlu.is_some()
        && ops.aclnnMoeFinalizeRoutingV2GetWorkspaceSize.is_some()
        && ops.aclnnMoeFinalizeRoutingV2.is_some()
        && ops.aclnnCastGetWorkspaceSize.is_some()
        && ops.aclnnCast.is_some()
        && ops.aclnnInplaceZeroGetWorkspaceSize.is_some()
        && ops.aclnnInplaceZero.is_some()
}

/// GroupedMatmulV4's limits (module doc, step 4), as Unsupported.
fn check_limits(call: &MoeExpertsCall<'_>) -> Result<()> {
    if call.experts > MAX_GROUPS {
        return Err(unsupported(
            Op::MoeExperts,
            format!("E={}", call.experts),
            "aclnnGroupedMatmulV4 takes at most 1024 groups (experts)",
        ));
    }
    for (what, k) in [("H", call.hidden), ("I", call.inter)] {
        if k > MAX_K {
            return Err(unsupported(
                Op::MoeExperts,
                format!("{what}={k}"),
                "aclnnGroupedMatmulV4 needs K (H for gate/up, I for down) <= 65535",
            ));
        }
    }
    if let Some(sh) = &call.shared {
        if sh.count > MAX_GROUPS || sh.inter > MAX_K {
            return Err(unsupported(
                Op::MoeExperts,
                format!("S={} Is={}", sh.count, sh.inter),
                "aclnnGroupedMatmulV4 takes at most 1024 groups (shared experts) and K <= 65535",
            ));
        }
    }
    Ok(())
}

/// Whether the loaded op libraries also have what shared experts need (on top of
/// [`available`]): aclnnInplaceCopy, to repeat x once per shared expert.
pub fn shared_available(ops: &OpApi) -> bool {
    available(ops)
        && ops.aclnnInplaceCopyGetWorkspaceSize.is_some()
        && ops.aclnnInplaceCopy.is_some()
}

/// Whether the loaded op libraries also have what the SwiGLU clamp needs (on top of
/// [`available`]): aclnnClamp and aclnnInplaceCopy.
pub fn clamp_available(ops: &OpApi) -> bool {
    shared_available(ops) && ops.aclnnClampGetWorkspaceSize.is_some() && ops.aclnnClamp.is_some()
}

/// The SwiGLU clamp `c` (`swiglu_limit`) on the gate/up projections `h13` [rows, 2 * inter]
/// in place: gate = min(gate, c), up = clamp(up, -c, c), each by aclnnClamp (a null bound is
/// no bound) from a strided half into a contiguous temporary, copied back with
/// aclnnInplaceCopy (which takes non-contiguous views on both sides). SwiGlu then computes
/// silu(min(g, c)) * clamp(u, -c, c).
fn clamp_halves(
    dev: &Arc<Device>,
    dt: i32,
    esz: usize,
    h13: &DevMem,
    rows: usize,
    inter: usize,
    c: f32,
) -> Result<()> {
    let ops = &dev.cann.ops;
    let max = dev.scalar_f32(c)?;
    let min = dev.scalar_f32(-c)?;
    let null = std::ptr::null_mut();
    for (half, lo) in [(0, null), (inter, min.raw())] {
        let tmp = dev.alloc(rows * inter * esz)?;
        let part = dev.tensor(h13, &[rows, inter], Some(&[2 * inter, 1]), half, dt)?;
        let flat = dev.tensor(&tmp, &[rows, inter], None, 0, dt)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        dev.run(
            "aclnnClamp",
            |ws, ex| unsafe {
                (ops.aclnnClampGetWorkspaceSize
                    .expect("checked by clamp_available()"))(
                    part.raw(),
                    lo,
                    max.raw(),
                    flat.raw(),
                    ws,
                    ex,
                )
            },
            ops.aclnnClamp,
        )?;
        compose::inplace_copy(dev, &part, &flat)?;
    }
    Ok(())
}

fn bytes_of<T: Copy>(v: &[T], f: impl Fn(T) -> [u8; 4]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Whether the loaded op libraries also have what FP8 weights need (aclnnMul and
/// aclnnIndexSelect, with [`available`]'s aclnnCast).
pub fn fp8_available(ops: &OpApi) -> bool {
    available(ops)
        && ops.aclnnMul.is_some()
        && ops.aclnnMulGetWorkspaceSize.is_some()
        && ops.aclnnIndexSelect.is_some()
        && ops.aclnnIndexSelectGetWorkspaceSize.is_some()
}

/// FP8 weights `w` [e, rows, cols] (e4m3fn bytes) with block scales `scale` [e,
/// ceil(rows/128), ceil(cols/128)] F32 -> run-dtype weights: codes cast UINT8 -> INT32
/// (aclnnCast) and looked up in the e4m3 value `table` (aclnnIndexSelect); the scales
/// repeated to every element by two aclnnIndexSelect (columns c -> block c/128, rows r ->
/// r/128: partial edge blocks included); aclnnMul; aclnnCast to the run dtype (F32: kept).
#[allow(clippy::too_many_arguments)]
fn dequantize(
    be: &AscendBackend,
    w: &DevMem,
    scale: &DevMem,
    table: &DevMem,
    e: usize,
    rows: usize,
    cols: usize,
    dtype: DType,
) -> Result<Arc<DevMem>> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let i32_t = acl_dtype(DType::I32);
    let n = e * rows * cols;
    let (rb, cb) = (rows.div_ceil(128), cols.div_ceil(128));
    let codes = dev.alloc(n * 4)?;
    compose::cast_mem(dev, w, &[n], ACL_UINT8, &codes, i32_t)?;
    // Every index lies inside its dimension (bytes < 256, blocks < ceil(len / 128)).
    let values = dev.alloc(n * 4)?;
    compose::index_select(
        dev,
        &dev.tensor(table, &[256], None, 0, ACL_FLOAT)?,
        0,
        &dev.tensor(&codes, &[n], None, 0, i32_t)?,
        &dev.tensor(&values, &[n], None, 0, ACL_FLOAT)?,
    )?;
    let blocks = |len: usize| -> Vec<u8> {
        (0..len)
            .flat_map(|x| ((x / 128) as i32).to_le_bytes())
            .collect()
    };
    let col_idx = dev.upload_bytes(&blocks(cols))?;
    let row_idx = dev.upload_bytes(&blocks(rows))?;
    let s_cols = dev.alloc(e * rb * cols * 4)?;
    compose::index_select(
        dev,
        &dev.tensor(scale, &[e, rb, cb], None, 0, ACL_FLOAT)?,
        2,
        &dev.tensor(&col_idx, &[cols], None, 0, i32_t)?,
        &dev.tensor(&s_cols, &[e, rb, cols], None, 0, ACL_FLOAT)?,
    )?;
    let s_full = dev.alloc(n * 4)?;
    compose::index_select(
        dev,
        &dev.tensor(&s_cols, &[e, rb, cols], None, 0, ACL_FLOAT)?,
        1,
        &dev.tensor(&row_idx, &[rows], None, 0, i32_t)?,
        &dev.tensor(&s_full, &[e, rows, cols], None, 0, ACL_FLOAT)?,
    )?;
    let w32 = dev.alloc(n * 4)?;
    {
        let a = dev.tensor(&values, &[e, rows, cols], None, 0, ACL_FLOAT)?;
        let b = dev.tensor(&s_full, &[e, rows, cols], None, 0, ACL_FLOAT)?;
        let c = dev.tensor(&w32, &[e, rows, cols], None, 0, ACL_FLOAT)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        dev.run(
            "aclnnMul",
            |ws, ex| unsafe {
                (ops.aclnnMulGetWorkspaceSize
                    .expect("checked by fp8_available()"))(
                    a.raw(), b.raw(), c.raw(), ws, ex
                )
            },
            ops.aclnnMul,
        )?;
    }
    if dtype == DType::F32 {
        return Ok(w32);
    }
    let out = dev.alloc(n * dtype.size_in_bytes())?;
    compose::cast_mem(dev, &w32, &[n], ACL_FLOAT, &out, acl_dtype(dtype))?;
    Ok(out)
}

/// aclnnMoeFinalizeRoutingV2 with dropPadMode 2 (dropless, InitRoutingV2's row order):
/// `out[t] = x1[t] (when given: the op's skip input) + sum_k scales[t, k] *
/// expanded[rows[(t, k)]]`.
fn finalize(
    dev: &Arc<Device>,
    expanded: &AclTensor<'_>,
    rows: &AclTensor<'_>,
    x1: Option<&AclTensor<'_>>,
    scales: &AclTensor<'_>,
    out: &AclTensor<'_>,
) -> Result<()> {
    let ops = &dev.cann.ops;
    let null = std::ptr::null_mut();
    let x1 = x1.map_or(null, AclTensor::raw);
    // SAFETY: handles live for the call; out-pointers come from `Device::run`.
    dev.run(
        "aclnnMoeFinalizeRoutingV2",
        |ws, exr| unsafe {
            (ops.aclnnMoeFinalizeRoutingV2GetWorkspaceSize
                .expect("checked by available()"))(
                expanded.raw(),
                rows.raw(),
                x1,
                null,
                null,
                scales.raw(),
                null,
                2,
                out.raw(),
                ws,
                exr,
            )
        },
        ops.aclnnMoeFinalizeRoutingV2,
    )
}

/// The m-axis groups of one GroupedMatmulV4 pass: `rows` input rows, `count` groups
/// (weights), `list` their cumulative row counts (INT64, at least `count` entries).
struct Groups<'a> {
    rows: usize,
    count: usize,
    list: &'a DevMem,
}

/// `out[rows, n] = input[rows, kk] @ weight[g]^T` per group g, weight [count, n, kk] in
/// the run dtype `dt`, passed as GMM's [count, kk, n] transposed view.
#[allow(clippy::too_many_arguments)]
fn gmm(
    dev: &Arc<Device>,
    dt: i32,
    groups: &Groups<'_>,
    input: &DevMem,
    kk: usize,
    weight: &DevMem,
    n: usize,
    out: &DevMem,
) -> Result<()> {
    let ops = &dev.cann.ops;
    let (rows, e) = (groups.rows, groups.count);
    let xs = dev.tensor_list(vec![dev.tensor(input, &[rows, kk], None, 0, dt)?])?;
    // Our weights are [E, N, K]; GMM's [E, K, N] as the transposed view.
    let ws_t = dev.tensor_list(vec![dev.tensor(
        weight,
        &[e, kk, n],
        Some(&[n * kk, 1, kk]),
        0,
        dt,
    )?])?;
    let ys = dev.tensor_list(vec![dev.tensor(out, &[rows, n], None, 0, dt)?])?;
    // The first `count` cumsums: rows past the last group (parked slots) are not computed.
    let gl = dev.tensor(groups.list, &[e], None, 0, ACL_INT64)?;
    let null = std::ptr::null_mut();
    // SAFETY: handles live for the call; splitItem 2 (single out), groupType 0 (m),
    // groupListType 0 (cumsum), actType 0.
    dev.run(
        "aclnnGroupedMatmulV4",
        |wsz, exr| unsafe {
            (ops.aclnnGroupedMatmulV4GetWorkspaceSize
                .expect("checked by available()"))(
                xs.raw(),
                ws_t.raw(),
                null,
                null,
                null,
                null,
                null,
                null,
                gl.raw(),
                null,
                null,
                null,
                2,
                0,
                0,
                0,
                ys.raw(),
                null,
                null,
                wsz,
                exr,
            )
        },
        ops.aclnnGroupedMatmulV4,
    )
}

/// The SwiGLU FFN of every group: gate/up GEMM (w13 [count, 2 * inter, h]), the clamp if
/// any ([`clamp_halves`]), SwiGlu (dim -1: silu(first half) * second half), down GEMM (w2
/// [count, h, inter]); returns the down projection [rows, h] in the run dtype.
#[allow(clippy::too_many_arguments)]
fn ffn(
    dev: &Arc<Device>,
    dt: i32,
    esz: usize,
    groups: &Groups<'_>,
    h: usize,
    inter: usize,
    input: &DevMem,
    w13: &DevMem,
    w2: &DevMem,
    clamp: Option<f32>,
) -> Result<Arc<DevMem>> {
    let ops = &dev.cann.ops;
    let rows = groups.rows;
    let h13 = dev.alloc(rows * 2 * inter * esz)?;
    gmm(dev, dt, groups, input, h, w13, 2 * inter, &h13)?;
    if let Some(c) = clamp {
        clamp_halves(dev, dt, esz, &h13, rows, inter, c)?;
    }
    let act = dev.alloc(rows * inter * esz)?;
    {
        let a = dev.tensor(&h13, &[rows, 2 * inter], None, 0, dt)?;
        let b = dev.tensor(&act, &[rows, inter], None, 0, dt)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        dev.run(
            "aclnnSwiGlu",
            |ws, ex| unsafe {
                (ops.aclnnSwiGluGetWorkspaceSize
                    .expect("checked by available()"))(a.raw(), -1, b.raw(), ws, ex)
            },
            ops.aclnnSwiGlu,
        )?;
    }
    let down = dev.alloc(rows * h * esz)?;
    gmm(dev, dt, groups, &act, inter, w2, h, &down)?;
    Ok(down)
}

/// Runs moe_experts.
pub fn run(be: &AscendBackend, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
    let dev = &be.dev;
    let ops = &dev.cann.ops;
    let (t, h, i, e, k) = (
        call.tokens,
        call.hidden,
        call.inter,
        call.experts,
        call.top_k,
    );
    let x_mem = be.mem(call.x, "moe_experts", "x")?;
    let w13_mem = be.mem(call.w13, "moe_experts", "w13")?;
    let w2_mem = be.mem(call.w2, "moe_experts", "w2")?;
    let ids_mem = be.mem(call.topk_ids, "moe_experts", "topk_ids")?;
    let wts_mem = be.mem(call.topk_weights, "moe_experts", "topk_weights")?;

    // 1-2. Ids on the host: check (an input error comes before any capability check),
    // then park the slots that contribute nothing on expert E with weight 0.
    let ids = i32s(&dev.download_bytes(ids_mem, t * k * 4)?);
    indices::check_topk_ids(call, &ids)?;
    check_limits(call)?;
    require_ops(Op::MoeExperts, available(&dev.cann.ops))?;
    if call.shared.is_some() {
        require_ops(Op::MoeExperts, shared_available(&dev.cann.ops))?;
    }
    if call.params.swiglu_limit.is_some() {
        require_ops(Op::MoeExperts, clamp_available(&dev.cann.ops))?;
    }
    // Validated: finite and > 0 as an f32.
    let clamp = call.params.swiglu_limit.map(|c| c as f32);
    // FP8 weights (w8a16): dequantized into run-dtype temporaries first (module doc, 9).
    let dequantized = match &call.fp8_scales {
        None => None,
        Some(sc) => {
            require_ops(Op::MoeExperts, fp8_available(&dev.cann.ops))?;
            let table = super::mla_sparse_decode::e4m3_table(be)?;
            let s13 = be.mem(sc.w13_scale, "moe_experts", "w13_scale")?;
            let s2 = be.mem(sc.w2_scale, "moe_experts", "w2_scale")?;
            Some((
                dequantize(be, w13_mem, s13, &table, e, 2 * i, h, call.dtype)?,
                dequantize(be, w2_mem, s2, &table, e, h, i, call.dtype)?,
            ))
        }
    };
    let (w13_mem, w2_mem) = match &dequantized {
        Some((a, b)) => (&**a, &**b),
        None => (w13_mem, w2_mem),
    };
    let mut weights: Vec<f32> = dev
        .download_bytes(wts_mem, t * k * 4)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // E <= 1024 (check_limits), so E as i32 is exact.
    let parked_id = e as i32;
    let mut routed = ids;
    for (id, w) in routed.iter_mut().zip(weights.iter_mut()) {
        // `== 0.0` is also true for -0.0.
        if *id < 0 || *w == 0.0 {
            *id = parked_id;
            *w = 0.0;
        }
    }
    let live = routed.iter().filter(|&&id| id != parked_id).count();
    let ids_dev = dev.upload_bytes(&bytes_of(&routed, i32::to_le_bytes))?;
    let wts_dev = dev.upload_bytes(&bytes_of(&weights, f32::to_le_bytes))?;

    let dt = acl_dtype(call.dtype);
    let esz = call.dtype.size_in_bytes();
    let rows = t * k;
    let i32_t = acl_dtype(DType::I32);

    // 3. Permute tokens by expert (expert E = the parked slots, sorted last).
    let expanded = dev.alloc(rows * h * esz)?;
    let row_idx = dev.alloc(rows * 4)?;
    let cumsum = dev.alloc((e + 1) * 4)?;
    {
        let x = dev.tensor(x_mem, &[t, h], None, 0, dt)?;
        let idx = dev.tensor(&ids_dev, &[t, k], None, 0, i32_t)?;
        let ex_t = dev.tensor(&expanded, &[rows, h], None, 0, dt)?;
        let ri = dev.tensor(&row_idx, &[rows], None, 0, i32_t)?;
        let cs = dev.tensor(&cumsum, &[e + 1], None, 0, i32_t)?;
        let null = std::ptr::null_mut();
        // SAFETY: handles live for the call; out-pointers come from `Device::run`; dropless
        // (dropPadMode 0, activeNum 0), cumsum counts (flag 1).
        dev.run(
            "aclnnMoeInitRoutingV2",
            |ws, exr| unsafe {
                (ops.aclnnMoeInitRoutingV2GetWorkspaceSize
                    .expect("checked by available()"))(
                    x.raw(),
                    idx.raw(),
                    0,
                    0,
                    (e + 1) as i64,
                    0,
                    1,
                    false,
                    ex_t.raw(),
                    ri.raw(),
                    cs.raw(),
                    null,
                    ws,
                    exr,
                )
            },
            ops.aclnnMoeInitRoutingV2,
        )?;
    }
    // 4-5. Gate/up GEMM, SwiGLU, down GEMM.
    let group_list = dev.alloc((e + 1) * 8)?;
    compose::cast_mem(dev, &cumsum, &[e + 1], i32_t, &group_list, ACL_INT64)?;
    let routed_groups = Groups {
        rows,
        count: e,
        list: &group_list,
    };
    let down = ffn(
        dev,
        dt,
        esz,
        &routed_groups,
        h,
        i,
        &expanded,
        w13_mem,
        w2_mem,
        clamp,
    )?;

    // 6. Weighted combine in f32.
    let down32 = if call.dtype == DType::F32 {
        down.clone()
    } else {
        let d = dev.alloc(rows * h * 4)?;
        compose::cast_mem(dev, &down, &[rows, h], dt, &d, ACL_FLOAT)?;
        d
    };
    if live < rows {
        // The parked slots' rows: never written by GMM (they lie past its last group), so
        // zeroed here, on the stream after the cast.
        let parked = dev.tensor(&down32, &[rows - live, h], None, live * h, ACL_FLOAT)?;
        // SAFETY: as above; the view lies inside `down32` ([rows, h] f32).
        dev.run(
            "aclnnInplaceZero",
            |ws, ex| unsafe {
                (ops.aclnnInplaceZeroGetWorkspaceSize
                    .expect("checked by available()"))(parked.raw(), ws, ex)
            },
            ops.aclnnInplaceZero,
        )?;
    }
    let y32 = dev.alloc(t * h * 4)?;
    {
        let ex_t = dev.tensor(&down32, &[rows, h], None, 0, ACL_FLOAT)?;
        let ri = dev.tensor(&row_idx, &[rows], None, 0, i32_t)?;
        let sc = dev.tensor(&wts_dev, &[t, k], None, 0, ACL_FLOAT)?;
        let out = dev.tensor(&y32, &[t, h], None, 0, ACL_FLOAT)?;
        finalize(dev, &ex_t, &ri, None, &sc, &out)?;
    }
    // 8. Shared experts (every token, weight 1), added to the routed sum in f32.
    let y32 = match &call.shared {
        None => y32,
        Some(sh) => {
            let (sn, si) = (sh.count, sh.inter);
            let srows = sn * t;
            let sw13 = be.mem(sh.w13, "moe_experts", "shared_w13")?;
            let sw2 = be.mem(sh.w2, "moe_experts", "shared_w2")?;
            // x once per shared expert: group s is rows [s*T, (s+1)*T).
            let xs = dev.alloc(srows * h * esz)?;
            for s in 0..sn {
                let dst = dev.tensor(&xs, &[t, h], None, s * t * h, dt)?;
                let src = dev.tensor(x_mem, &[t, h], None, 0, dt)?;
                compose::inplace_copy(dev, &dst, &src)?;
            }
            let cums: Vec<u8> = (1..=sn)
                .flat_map(|s| ((s * t) as i64).to_le_bytes())
                .collect();
            let list = dev.upload_bytes(&cums)?;
            let groups = Groups {
                rows: srows,
                count: sn,
                list: &list,
            };
            let sdown = ffn(dev, dt, esz, &groups, h, si, &xs, sw13, sw2, clamp)?;
            let sdown32 = if call.dtype == DType::F32 {
                sdown
            } else {
                let d = dev.alloc(srows * h * 4)?;
                compose::cast_mem(dev, &sdown, &[srows, h], dt, &d, ACL_FLOAT)?;
                d
            };
            // Finalize again: token t's slots s read row s*T + t with scale 1, plus x1 = the
            // routed sum.
            let idx: Vec<i32> = (0..t)
                .flat_map(|tok| (0..sn).map(move |s| (s * t + tok) as i32))
                .collect();
            let idx_dev = dev.upload_bytes(&bytes_of(&idx, i32::to_le_bytes))?;
            let ones = dev.upload_bytes(&bytes_of(&vec![1.0f32; t * sn], f32::to_le_bytes))?;
            let total = dev.alloc(t * h * 4)?;
            let ex_t = dev.tensor(&sdown32, &[srows, h], None, 0, ACL_FLOAT)?;
            let ri = dev.tensor(&idx_dev, &[srows], None, 0, i32_t)?;
            let x1 = dev.tensor(&y32, &[t, h], None, 0, ACL_FLOAT)?;
            let sc = dev.tensor(&ones, &[t, sn], None, 0, ACL_FLOAT)?;
            let out = dev.tensor(&total, &[t, h], None, 0, ACL_FLOAT)?;
            // x1 = the routed sum.
            finalize(dev, &ex_t, &ri, Some(&x1), &sc, &out)?;
            total
        }
    };
    let y = if call.dtype == DType::F32 {
        y32
    } else {
        let y = dev.alloc(t * h * esz)?;
        compose::cast_mem(dev, &y32, &[t, h], ACL_FLOAT, &y, dt)?;
        y
    };
    dev.synchronize()?;
    Ok(be.wrap(y, [t, h], call.dtype))
}
