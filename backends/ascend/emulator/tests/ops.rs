//! The emulated ops follow Huawei's sources where they differ from what a caller might
//! expect (each case names the source the emulator cites): MoeGatingTopK's yOut and tiling
//! rules, FusedInferAttentionScoreV3's innerPrecise in MLA mode, GroupedMatmulV4's limits,
//! InplaceZero, SparseFlashAttention's -1 / duplicate / S2 reading rules and limits,
//! LightningIndexer's stable order, causal limit and limits. Calls go straight to the exported C functions.

use moemla_cann_emulator::handles::{
    aclCreateIntArray, aclCreateScalar, aclCreateTensor, aclCreateTensorList, AclTensor,
    AclTensorList,
};
use moemla_cann_emulator::memory::{aclrtMalloc, aclrtMemcpy};
use moemla_cann_emulator::ops::elementwise::{
    aclnnClamp, aclnnClampGetWorkspaceSize, aclnnInplaceZero, aclnnInplaceZeroGetWorkspaceSize,
};
use moemla_cann_emulator::ops::fused_infer_attention_score::aclnnFusedInferAttentionScoreV3GetWorkspaceSize;
use moemla_cann_emulator::ops::grouped_matmul::aclnnGroupedMatmulV4GetWorkspaceSize;
use moemla_cann_emulator::ops::lightning_indexer::{
    aclnnLightningIndexer, aclnnLightningIndexerGetWorkspaceSize,
};
use moemla_cann_emulator::ops::moe_gating_top_k::{
    aclnnMoeGatingTopK, aclnnMoeGatingTopKGetWorkspaceSize,
};
use moemla_cann_emulator::ops::scatter_pa_kv_cache::{
    aclnnScatterPaKvCache, aclnnScatterPaKvCacheGetWorkspaceSize,
};
use moemla_cann_emulator::ops::sparse_flash_attention::{
    aclnnSparseFlashAttention, aclnnSparseFlashAttentionGetWorkspaceSize,
};
use moemla_cann_emulator::runtime::{
    aclInit, aclrtCreateStream, aclrtSetDevice, aclrtSynchronizeStream,
};
use moemla_cann_emulator::status::{
    aclGetRecentErrMsg, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_PARAM_INVALID,
    ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_RUNTIME_ERROR,
};
use moemla_cann_emulator::tensor::{DT_F16, DT_F32, DT_I32, DT_I64, DT_U8, FORMAT_ND};
use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};

fn recent() -> String {
    // SAFETY: returns null or a live C string.
    unsafe {
        let p = aclGetRecentErrMsg();
        assert!(!p.is_null());
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// aclInit (a repeat is harmless), device 0 on this thread, and a stream.
fn stream() -> *mut c_void {
    // SAFETY: plain FFI calls with out-pointers to locals.
    unsafe {
        aclInit(null());
        assert_eq!(aclrtSetDevice(0), 0);
        let mut s = null_mut();
        assert_eq!(aclrtCreateStream(&mut s), 0);
        s
    }
}

fn malloc(bytes: usize) -> *mut c_void {
    let mut p = null_mut();
    // SAFETY: out-pointer to a local.
    assert_eq!(unsafe { aclrtMalloc(&mut p, bytes.max(1), 0) }, 0);
    p
}

/// Device memory holding `data`'s bytes.
fn upload<T: Copy>(data: &[T]) -> *mut c_void {
    let bytes = std::mem::size_of_val(data);
    let p = malloc(bytes);
    // SAFETY: `p` holds `bytes` bytes; `data` is valid for them (kind 1 = host to device).
    let st = unsafe { aclrtMemcpy(p, bytes, data.as_ptr() as *const c_void, bytes, 1) };
    assert_eq!(st, 0);
    p
}

/// `n` values of `T` copied back from `p`.
fn download<T: Copy + Default>(p: *mut c_void, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); n];
    let bytes = std::mem::size_of_val(out.as_slice());
    // SAFETY: `out` holds `bytes` bytes (kind 2 = device to host).
    let st = unsafe { aclrtMemcpy(out.as_mut_ptr() as *mut c_void, bytes, p, bytes, 2) };
    assert_eq!(st, 0);
    out
}

/// An aclTensor `dims` (row-major unless `strides`) from element `offset` of `storage`
/// elements at `data`.
fn view(
    data: *mut c_void,
    dims: &[usize],
    strides: Option<&[usize]>,
    offset: usize,
    storage: usize,
    dtype: i32,
) -> *mut AclTensor {
    let d: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
    let s: Vec<i64> = match strides {
        Some(s) => s.iter().map(|&x| x as i64).collect(),
        None => (0..dims.len())
            .map(|i| dims[i + 1..].iter().product::<usize>() as i64)
            .collect(),
    };
    let st = [storage as i64];
    // SAFETY: arrays valid for their lengths.
    let t = unsafe {
        aclCreateTensor(
            d.as_ptr(),
            d.len() as u64,
            dtype,
            s.as_ptr(),
            offset as i64,
            FORMAT_ND,
            st.as_ptr(),
            1,
            data,
        )
    };
    assert!(!t.is_null(), "{}", recent());
    t
}

/// A contiguous tensor over its own new device copy of `data`.
fn tensor<T: Copy>(data: &[T], dims: &[usize], dtype: i32) -> (*mut c_void, *mut AclTensor) {
    let p = upload(data);
    (p, view(p, dims, None, 0, data.len(), dtype))
}

fn list(t: *mut AclTensor) -> *mut AclTensorList {
    let items = [t as *const AclTensor];
    // SAFETY: one valid element.
    unsafe { aclCreateTensorList(items.as_ptr(), 1) }
}

/// Runs a prepared executor on `stream` with the workspace it asked for, and waits.
fn launch(
    op: unsafe extern "C" fn(*mut c_void, u64, *mut c_void, *mut c_void) -> i32,
    ws: u64,
    exec: *mut c_void,
    stream: *mut c_void,
) {
    let buf = malloc(ws as usize);
    // SAFETY: executor from the matching first phase; workspace of its size.
    unsafe {
        assert_eq!(op(buf, ws, exec, stream), 0, "{}", recent());
        assert_eq!(aclrtSynchronizeStream(stream), 0, "{}", recent());
    }
}

/// MoeGatingTopK attributes (k, kGroup, groupCount, groupSelectMode, renorm, normType,
/// scale, eps).
type GatingAttrs = (i64, i64, i64, i64, i64, i64, f64, f64);

/// MoeGatingTopK's first phase over F32 `x` [t, e] (outFlag true); the status and, on
/// success, the executor and device outputs (yOut, expertIdxOut, outOut).
fn gating(
    x: &[f32],
    t: usize,
    e: usize,
    a: GatingAttrs,
) -> Result<(u64, *mut c_void, [*mut c_void; 3]), i32> {
    let (k, k_group, groups, mode, renorm, norm_type, scale, eps) = a;
    let kk = k.max(0) as usize;
    let (_, xt) = tensor(x, &[t, e], DT_F32);
    let (y, yt) = tensor(&vec![0f32; t * kk], &[t, kk], DT_F32);
    let (ids, it) = tensor(&vec![0i32; t * kk], &[t, kk], DT_I32);
    let (norm, nt) = tensor(&vec![0f32; t * e], &[t, e], DT_F32);
    let (mut ws, mut exec) = (0u64, null_mut());
    // SAFETY: handles from the emulator; out-pointers are locals.
    let st = unsafe {
        aclnnMoeGatingTopKGetWorkspaceSize(
            xt,
            null(),
            k,
            k_group,
            groups,
            mode,
            renorm,
            norm_type,
            true,
            scale,
            eps,
            yt,
            it,
            nt,
            &mut ws,
            &mut exec,
        )
    };
    if st == 0 {
        Ok((ws, exec, [y, ids, norm]))
    } else {
        Err(st)
    }
}

/// Runs MoeGatingTopK; returns (yOut, expertIdxOut, normOut).
fn run_gating(x: &[f32], t: usize, e: usize, a: GatingAttrs) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let s = stream();
    let (ws, exec, [y, ids, norm]) = gating(x, t, e, a).unwrap_or_else(|st| {
        panic!("status {st}: {}", recent());
    });
    launch(aclnnMoeGatingTopK, ws, exec, s);
    let k = a.0 as usize;
    (
        download(y, t * k),
        download(ids, t * k),
        download(norm, t * e),
    )
}

#[test]
fn moe_gating_top_k_softmax_y_is_scaled_not_renormalised() {
    // ops-transformer moe_gating_top_k_without_group.h SelectTopKExpertScore: only
    // normType 1 divides by sum + eps.
    let x = [0.5f32, -1.0, 2.0, 0.25, 1.5, -0.5, 0.0, 1.0];
    let (y, ids, norm) = run_gating(&x, 1, 8, (3, 1, 1, 0, 0, 0, 2.0, 1e-20));
    let z: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
    let softmax: Vec<f64> = x.iter().map(|&v| (v as f64).exp() / z).collect();
    assert_eq!(ids, [2, 4, 7]);
    for (j, &id) in ids.iter().enumerate() {
        let want = softmax[id as usize] * 2.0;
        assert!((y[j] as f64 - want).abs() < 1e-6, "{y:?} vs softmax * 2");
        assert!((norm[id as usize] as f64 - softmax[id as usize]).abs() < 1e-6);
    }
    // Renormalised weights would sum to the scale; these sum to 2 * 0.78.
    let sum: f32 = y.iter().sum();
    assert!((sum - 2.0).abs() > 0.3, "sum {sum}");
}

#[test]
fn moe_gating_top_k_sigmoid_y_divides_by_sum_plus_eps() {
    // Same source: sigmoid yOut = y / (sum(y) + eps) * routedScalingFactor. A large eps
    // tells sum + eps from max(sum, eps).
    let x = [3.0f32, -2.0, 1.0, 0.0];
    let (y, ids, _) = run_gating(&x, 1, 4, (2, 1, 1, 0, 0, 1, 1.5, 0.5));
    assert_eq!(ids, [0, 2]);
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (a, b) = (sig(3.0), sig(1.0));
    for (got, s) in y.iter().zip([a, b]) {
        let want = s / (a + b + 0.5) * 1.5;
        assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }
}

#[test]
fn moe_gating_top_k_align32_is_checked_only_when_groups_are_selected() {
    // moe_gating_top_k_tiling.cpp CheckAttr: align32(E / groupCount) * groupCount <= 2048
    // only "分组场景" (groupCount not 1, not E, kGroup < groupCount).
    let (t, e) = (1, 2040); // 120 groups of 17: 120 * 32 = 3840 > 2048
    let x: Vec<f32> = (0..e)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let (_, ids, _) = run_gating(&x, t, e, (4, 120, 120, 0, 0, 1, 1.0, 1e-20));
    let mut want: Vec<usize> = (0..e).collect();
    want.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    let want: Vec<i32> = want[..4].iter().map(|&i| i as i32).collect();
    assert_eq!(ids, want);
    let st = gating(&x, t, e, (4, 4, 120, 0, 0, 1, 1.0, 1e-20)).unwrap_err();
    assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR);
    assert!(recent().contains("group count * group expert count align is: 3840"));
}

#[test]
fn moe_gating_top_k_tiling_rejects_what_its_tiling_rejects() {
    stream();
    let x = vec![0.1f32; 8];
    // Top-2 sum needs two experts per group; max is fine with one.
    let st = gating(&x, 1, 8, (2, 4, 8, 1, 0, 1, 1.0, 1e-20)).unwrap_err();
    assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR);
    assert!(recent().contains("group expert count should be greater than 1"));
    assert!(gating(&x, 1, 8, (2, 4, 8, 0, 0, 1, 1.0, 1e-20)).is_ok());
    // renorm 1 and normType 2 are refused by the tiling (not a dtype / null error).
    for attrs in [
        (2, 1, 1, 0, 1, 1, 1.0, 1e-20),
        (2, 1, 1, 0, 0, 2, 1.0, 1e-20),
        (2, 1, 1, 2, 0, 1, 1.0, 1e-20),
        (9, 1, 1, 0, 0, 1, 1.0, 1e-20),
        (5, 1, 2, 0, 0, 1, 1.0, 1e-20),
    ] {
        let st = gating(&x, 1, 8, attrs).unwrap_err();
        assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR, "{attrs:?}: {}", recent());
    }
}

/// FusedInferAttentionScoreV3's first phase in MLA mode: B 1, Q_S 2, N 1, one block of 16,
/// sparseMode 3 with the 2048 x 2048 mask, `inner_precise`.
fn fia_mla(inner_precise: i64) -> i32 {
    let (_, q) = tensor(&vec![0u16; 2 * 512], &[1, 2, 1, 512], DT_F16);
    let (_, q_rope) = tensor(&vec![0u16; 2 * 64], &[1, 2, 1, 64], DT_F16);
    let (kv, _) = tensor(&vec![0u16; 16 * 512], &[1, 16, 512], DT_F16);
    let key = list(view(kv, &[1, 16, 512], None, 0, 16 * 512, DT_F16));
    let value = list(view(kv, &[1, 16, 512], None, 0, 16 * 512, DT_F16));
    let (_, k_rope) = tensor(&vec![0u16; 16 * 64], &[1, 16, 64], DT_F16);
    let (_, table) = tensor(&[0i32], &[1, 1], DT_I32);
    let (_, mask) = tensor(&vec![0u8; 2048 * 2048], &[2048, 2048], DT_U8);
    let (_, out) = tensor(&vec![0u16; 2 * 512], &[1, 2, 1, 512], DT_F16);
    let lens = [5i64];
    // SAFETY: one valid element.
    let seq_kv = unsafe { aclCreateIntArray(lens.as_ptr(), 1) };
    let (mut ws, mut exec) = (0u64, null_mut());
    let n = null();
    // SAFETY: handles from the emulator, the rest null; a C string layout; out-pointers
    // are locals.
    unsafe {
        aclnnFusedInferAttentionScoreV3GetWorkspaceSize(
            q,
            key,
            value,
            n,
            mask,
            null(),
            seq_kv,
            n,
            n,
            n,
            n,
            n,
            n,
            n,
            table,
            n,
            n,
            n,
            n,
            n,
            n,
            n,
            n,
            null(),
            q_rope,
            k_rope,
            n,
            1,
            0.0625,
            2147483647,
            0,
            c"BSND".as_ptr(),
            1,
            3,
            inner_precise,
            16,
            0,
            false,
            0,
            0,
            out,
            n,
            &mut ws,
            &mut exec,
        )
    }
}

#[test]
fn fia_mla_mode_takes_inner_precise_0_or_1_only() {
    // fused_infer_attention_score_tiling_check_feature.cpp CheckFeatureMlaNoquantUnsupported.
    stream();
    for ok in [0, 1] {
        assert_eq!(fia_mla(ok), 0, "innerPrecise {ok}: {}", recent());
    }
    for bad in [2, 3] {
        assert_eq!(fia_mla(bad), ACLNN_ERR_INNER_TILING_ERROR);
        let msg = recent();
        assert!(
            msg.ends_with(&format!("inner_precise({bad}) should be 0 or 1 in MLA")),
            "{msg}"
        );
    }
    assert_eq!(fia_mla(4), ACLNN_ERR_INNER_TILING_ERROR);
}

/// GroupedMatmulV4's first phase: x [m, k], weight [e, k, n] (transposed in its last two
/// dims if `transposed`), groupList [e] cumsum, out [m, n].
fn gmm(m: usize, k: usize, n: usize, e: usize, transposed: bool) -> i32 {
    let (_, x) = tensor(&vec![0u16; m * k], &[m, k], DT_F16);
    let wp = upload(&vec![0u16; e * k * n]);
    let strides = [k * n, 1, k];
    let w = view(
        wp,
        &[e, k, n],
        transposed.then_some(&strides[..]),
        0,
        e * k * n,
        DT_F16,
    );
    let groups: Vec<i64> = vec![m as i64; e];
    let (_, gl) = tensor(&groups, &[e], DT_I64);
    let (_, y) = tensor(&vec![0u16; m * n], &[m, n], DT_F16);
    let (mut ws, mut exec) = (0u64, null_mut());
    let n = null();
    // SAFETY: handles from the emulator, the rest null; out-pointers are locals.
    unsafe {
        aclnnGroupedMatmulV4GetWorkspaceSize(
            list(x),
            list(w),
            n,
            n,
            n,
            n,
            n,
            n,
            gl,
            n,
            n,
            n,
            2,
            0,
            0,
            0,
            list(y),
            n,
            n,
            &mut ws,
            &mut exec,
        )
    }
}

#[test]
fn grouped_matmul_v4_limits_groups_and_the_inner_axis() {
    // aclnn_grouped_matmul.cpp: groupList (tensor) at most 1024 long; x's K and, for a
    // weight that is not transposed, its N at most 65535.
    stream();
    assert_eq!(gmm(2, 2, 2, 1024, true), 0, "{}", recent());
    assert_eq!(gmm(2, 2, 2, 1025, true), ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("size of groupList 1025"), "{}", recent());
    assert_eq!(gmm(1, 65535, 1, 1, true), 0, "{}", recent());
    assert_eq!(gmm(1, 65536, 1, 1, true), ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("x[0] should less or equal to 65535"));
    assert_eq!(gmm(1, 2, 65536, 1, false), ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("Weight[0] should less or equal to 65535"));
    assert_eq!(gmm(1, 2, 65536, 1, true), 0, "{}", recent());
}

#[test]
fn inplace_zero_zeroes_its_view_only() {
    // ops-math aclnnInplaceZero.md: selfRef = 0; non-contiguous views allowed.
    let s = stream();
    let data: Vec<f32> = (1..=12).map(|v| v as f32).collect();
    let p = upload(&data);
    // Rows 1..3 of a [4, 3] matrix, columns 0 and 2.
    let t = view(p, &[2, 2], Some(&[3, 2]), 3, 12, DT_F32);
    let (mut ws, mut exec) = (0u64, null_mut());
    // SAFETY: handle from the emulator; out-pointers are locals.
    assert_eq!(
        unsafe { aclnnInplaceZeroGetWorkspaceSize(t, &mut ws, &mut exec) },
        0
    );
    launch(aclnnInplaceZero, ws, exec, s);
    let got: Vec<f32> = download(p, 12);
    let want = [1., 2., 3., 0., 5., 0., 0., 8., 0., 10., 11., 12.];
    assert_eq!(got, want);
}

/// ScatterPaKvCache scene 6: key [n, 1, 3] (F16 bits 0x3C00 + i, or zeros as F32) into a
/// zeroed [2, 4, 1, 3] cache of the key's dtype at `slots`; the first-phase status, or the
/// synchronize status after the launch and the cache as 16-bit words.
fn scatter(slots: &[i32], dtype: i32) -> Result<(i32, Vec<u16>), i32> {
    let s = stream();
    let (n, d, cap) = (slots.len(), 3, 8);
    let words = if dtype == DT_F32 { 2 } else { 1 };
    let key: Vec<u16> = match dtype {
        DT_F32 => vec![0; n * d * 2],
        _ => (0..n * d).map(|i| 0x3C00 + i as u16).collect(),
    };
    let (_, kt) = tensor(&key, &[n, 1, d], dtype);
    scatter_with(s, kt, slots, dtype, cap, d * words)
}

fn scatter_with(
    s: *mut c_void,
    kt: *mut AclTensor,
    slots: &[i32],
    dtype: i32,
    cap: usize,
    words: usize,
) -> Result<(i32, Vec<u16>), i32> {
    let d = if dtype == DT_F32 { words / 2 } else { words };
    let (cache, ct) = tensor(&vec![0u16; cap * words], &[2, cap / 2, 1, d], dtype);
    let (_, st) = tensor(slots, &[slots.len()], DT_I32);
    let (_, vt) = tensor(&[0u16; 2], &[], dtype);
    let (_, vct) = tensor(&[0u16; 2], &[], dtype);
    let (mut ws, mut exec) = (0u64, null_mut());
    // SAFETY: handles from the emulator; the mode strings are C literals; out-pointers are
    // locals.
    let status = unsafe {
        aclnnScatterPaKvCacheGetWorkspaceSize(
            kt,
            ct,
            st,
            vt,
            vct,
            null(),
            null(),
            null(),
            c"Norm".as_ptr(),
            null(),
            null(),
            null(),
            &mut ws,
            &mut exec,
        )
    };
    if status != 0 {
        return Err(status);
    }
    let buf = malloc(ws as usize);
    // SAFETY: executor from the matching first phase; workspace of its size.
    let sync = unsafe {
        assert_eq!(aclnnScatterPaKvCache(buf, ws, exec, s), 0, "{}", recent());
        aclrtSynchronizeStream(s)
    };
    Ok((sync, download(cache, cap * words)))
}

#[test]
fn scatter_pa_kv_cache_writes_rows_at_flat_slots() {
    let (sync, cache) = scatter(&[5, 0, 2], DT_F16).unwrap();
    assert_eq!(sync, 0, "{}", recent());
    let row = |r: u16| [0x3C00 + 3 * r, 0x3C01 + 3 * r, 0x3C02 + 3 * r];
    let mut want = vec![0u16; 24];
    for (i, &slot) in [5usize, 0, 2].iter().enumerate() {
        want[slot * 3..slot * 3 + 3].copy_from_slice(&row(i as u16));
    }
    assert_eq!(cache, want);
}

#[test]
fn scatter_pa_kv_cache_refuses_what_its_page_leaves_undefined() {
    // A2/A3 take no FLOAT key ([doc] 参数说明, A2/A3 note).
    assert_eq!(scatter(&[1], DT_F32).unwrap_err(), ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("key"), "{}", recent());
    // Slots outside [0, num_blocks * block_size) (-1 included) and repeated slots: no
    // defined result on CANN, a run-time failure here, and nothing written.
    for slots in [&[3, -1][..], &[8][..], &[4, 1, 4][..]] {
        let (sync, cache) = scatter(slots, DT_F16).unwrap();
        assert_eq!(sync, ACLNN_ERR_RUNTIME_ERROR, "{slots:?}");
        assert!(cache.iter().all(|&v| v == 0), "{slots:?} wrote {cache:?}");
    }
}

#[test]
fn clamp_bounds_are_optional_and_nan_propagates() {
    // CANN aclnnClamp.md: y = max(min(x, max), min); a null bound is no bound, both null is
    // ACLNN_ERR_PARAM_NULLPTR. NaN: undocumented, propagated here (module doc).
    let s = stream();
    let x = [-3.0f32, -0.5, 0.5, 3.0, f32::NAN];
    let (_, xt) = tensor(&x, &[5], DT_F32);
    let c = 1.0f32;
    let neg = -1.0f32;
    // SAFETY: one f32 each, copied by the call.
    let (hi, lo) = unsafe {
        (
            aclCreateScalar(&c as *const f32 as *const c_void, DT_F32),
            aclCreateScalar(&neg as *const f32 as *const c_void, DT_F32),
        )
    };
    for (min, want) in [
        (null_mut(), [-3.0f32, -0.5, 0.5, 1.0]),
        (lo, [-1.0, -0.5, 0.5, 1.0]),
    ] {
        let (out, ot) = tensor(&[0f32; 5], &[5], DT_F32);
        let (mut ws, mut exec) = (0u64, null_mut());
        // SAFETY: handles from the emulator; out-pointers are locals.
        let st = unsafe { aclnnClampGetWorkspaceSize(xt, min, hi, ot, &mut ws, &mut exec) };
        assert_eq!(st, 0, "{}", recent());
        launch(aclnnClamp, ws, exec, s);
        let got: Vec<f32> = download(out, 5);
        assert_eq!(got[..4], want);
        assert!(got[4].is_nan());
    }
    let (_, ot) = tensor(&[0f32; 5], &[5], DT_F32);
    let (mut ws, mut exec) = (0u64, null_mut());
    // SAFETY: as above.
    let st = unsafe { aclnnClampGetWorkspaceSize(xt, null(), null(), ot, &mut ws, &mut exec) };
    assert_eq!(st, ACLNN_ERR_PARAM_NULLPTR);
}

/// Arguments of one aclnnSparseFlashAttention first phase that the tests vary.
struct SfaCall {
    dtype: i32,
    n1: usize,
    layout_kv: &'static std::ffi::CStr,
    attention_mode: i64,
    return_lse: bool,
    strided_query: bool,
    /// sparseIndices [1, S1 = 2, 1, 5].
    indices: [i32; 10],
}

impl Default for SfaCall {
    fn default() -> Self {
        SfaCall {
            dtype: DT_F16,
            n1: 1,
            layout_kv: c"BSND",
            attention_mode: 2,
            return_lse: true,
            strided_query: false,
            indices: [0, 1, 1, -1, 3, 0, 1, 1, 2, 3],
        }
    }
}

/// (attentionOut as f32, softmaxMax, softmaxSum).
type SfaOut = (Vec<f32>, Vec<f32>, Vec<f32>);

/// SFA over q = 0 (every score 0: uniform weights) and S2 = 4 keys whose row j holds j + 1
/// in all 512 dims (rope 0), so attentionOut is the mean of the attended j + 1. Returns the
/// first phase's status and, on success, (attentionOut [2 * N1 * 512] as f32, softmaxMax,
/// softmaxSum) after the launch.
fn sfa(c: SfaCall) -> Result<SfaOut, i32> {
    use half::f16;
    let s = stream();
    let (s1, s2, n1) = (2usize, 4usize, c.n1);
    let zeros = |n: usize| vec![f16::ZERO; n];
    let q_len = if c.strided_query { 2 } else { 1 } * s1 * n1 * 512;
    let q_mem = upload(&zeros(q_len));
    let q_strides: Vec<usize> = if c.strided_query {
        vec![s1 * n1 * 1024, n1 * 1024, 1024, 1]
    } else {
        vec![s1 * n1 * 512, n1 * 512, 512, 1]
    };
    let query = view(
        q_mem,
        &[1, s1, n1, 512],
        Some(&q_strides),
        0,
        q_len,
        c.dtype,
    );
    let (_, q_rope) = tensor(&zeros(s1 * n1 * 64), &[1, s1, n1, 64], c.dtype);
    let keys: Vec<f16> = (0..s2 * 512)
        .map(|e| f16::from_f32((e / 512 + 1) as f32))
        .collect();
    let paged = c.layout_kv.to_bytes() == b"PA_BSND";
    let kdims: [usize; 4] = if paged {
        [1, 16, 1, 512]
    } else {
        [1, s2, 1, 512]
    };
    let mut keys = keys;
    keys.resize(kdims.iter().product(), f16::ZERO);
    let (_, key) = tensor(&keys, &kdims, c.dtype);
    let (_, value) = tensor(&keys, &kdims, c.dtype);
    let (_, key_rope) = tensor(&zeros(kdims[1] * 64), &[1, kdims[1], 1, 64], c.dtype);
    let (_, indices) = tensor(&c.indices, &[1, s1, 1, 5], DT_I32);
    let (_, table) = tensor(&[0i32], &[1, 1], DT_I32);
    let (_, seq_kv) = tensor(&[s2 as i32], &[1], DT_I32);
    let out_mem = upload(&zeros(s1 * n1 * 512));
    let out = view(out_mem, &[1, s1, n1, 512], None, 0, s1 * n1 * 512, c.dtype);
    let (max_mem, max) = tensor(&vec![0f32; s1 * n1], &[1, 1, s1, n1], DT_F32);
    let (sum_mem, sum) = tensor(&vec![0f32; s1 * n1], &[1, 1, s1, n1], DT_F32);
    let (mut ws, mut exec) = (0u64, null_mut());
    let (table, seq_kv) = if paged {
        (table as *const AclTensor, seq_kv as *const AclTensor)
    } else {
        (null(), null())
    };
    // SAFETY: handles from this emulator; C-string layouts; out-pointers to locals.
    let st = unsafe {
        aclnnSparseFlashAttentionGetWorkspaceSize(
            query,
            key,
            value,
            indices,
            table,
            null(),
            seq_kv,
            q_rope,
            key_rope,
            1.0,
            1,
            c"BSND".as_ptr(),
            c.layout_kv.as_ptr(),
            0,
            i64::MAX,
            i64::MAX,
            c.attention_mode,
            c.return_lse,
            out,
            max,
            sum,
            &mut ws,
            &mut exec,
        )
    };
    if st != 0 {
        return Err(st);
    }
    launch(aclnnSparseFlashAttention, ws, exec, s);
    let o: Vec<f16> = download(out_mem, s1 * n1 * 512);
    Ok((
        o.iter().map(|v| v.to_f32()).collect(),
        download(max_mem, s1 * n1),
        download(sum_mem, s1 * n1),
    ))
}

#[test]
fn sparse_flash_attention_stops_at_the_first_minus_one_counts_duplicates_and_reads_at_most_s2() {
    // Row 0 [0, 1, 1, -1, 3]: reads 0, 1, 1 and stops at -1 (kernel CalcSinnerTopKBegin,
    // golden gatherKV): mean (1 + 2 + 2) / 3. Row 1 [0, 1, 1, 2, 3] over S2 4: validCount =
    // min(5, 4) = 4 entries: (1 + 2 + 2 + 3) / 4. Weights 1/3 are rounded to f16 before
    // P @ V (golden), so row 0 is 5 * f16(1/3).
    let (o, max, sum) = sfa(SfaCall::default()).unwrap();
    let third = half::f16::from_f32(1.0 / 3.0).to_f32();
    for d in 0..512 {
        assert!((o[d] - 5.0 * third).abs() < 2e-3, "o[0, {d}] = {}", o[d]);
        assert_eq!(o[512 + d], 2.0, "o[1, {d}]");
    }
    assert_eq!(max, [0.0, 0.0]);
    assert_eq!(sum, [3.0, 4.0]);
}

#[test]
fn sparse_flash_attention_gives_zero_and_min_max_for_a_row_with_nothing() {
    let (o, max, sum) = sfa(SfaCall {
        indices: [-1, 0, 1, 2, 3, 2, -1, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    assert!(o[..512].iter().all(|&v| v == 0.0));
    assert!(o[512..].iter().all(|&v| v == 3.0));
    assert_eq!(max, [-2e38, 0.0]);
    assert_eq!(sum, [0.0, 1.0]);
}

#[test]
fn sparse_flash_attention_rejects_what_its_doc_and_tiling_reject() {
    let tiling = ACLNN_ERR_INNER_TILING_ERROR;
    for (call, want, what) in [
        (
            SfaCall {
                layout_kv: c"PA_BSND",
                ..Default::default()
            },
            tiling,
            "returnSoftmaxLse with PA_BSND",
        ),
        (
            SfaCall {
                n1: 3,
                ..Default::default()
            },
            tiling,
            "N1 3",
        ),
        (
            SfaCall {
                attention_mode: 0,
                ..Default::default()
            },
            tiling,
            "attentionMode 0",
        ),
        (
            SfaCall {
                strided_query: true,
                ..Default::default()
            },
            ACLNN_ERR_PARAM_INVALID,
            "non-contiguous query",
        ),
        (
            SfaCall {
                dtype: DT_F32,
                ..Default::default()
            },
            ACLNN_ERR_PARAM_INVALID,
            "FLOAT query",
        ),
    ] {
        assert_eq!(sfa(call).err(), Some(want), "{what}: {}", recent());
    }
    // PA_BSND without lse is accepted (block table [[0]], block size 16).
    let (o, _, _) = sfa(SfaCall {
        layout_kv: c"PA_BSND",
        return_lse: false,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(o[512], 2.0);
}

/// Arguments of one aclnnLightningIndexer first phase that the tests vary.
struct LiCall {
    dtype: i32,
    n1: usize,
    d: usize,
    block: usize,
    count: usize,
    return_values: bool,
}

impl Default for LiCall {
    fn default() -> Self {
        LiCall {
            dtype: DT_F16,
            n1: 1,
            d: 128,
            block: 16,
            count: 4,
            return_values: false,
        }
    }
}

/// LI over query rows (B 1, S1 2) of all ones, weights 1, one key block whose position p
/// holds v[p] in every dim (v = 0.5, 2, 2, -1, 1: scores 64, 256, 256, 0, 128 at d 128),
/// actualSeqLengthsKey 5, sparseMode 3. The first phase's status or sparseIndicesOut.
fn li(c: LiCall) -> Result<Vec<i32>, i32> {
    use half::f16;
    let s = stream();
    let (s1, n1, d, bs) = (2usize, c.n1, c.d, c.block);
    let v = [0.5f32, 2.0, 2.0, -1.0, 1.0];
    let (_, query) = tensor(&vec![f16::ONE; s1 * n1 * d], &[1, s1, n1, d], c.dtype);
    let keys: Vec<f16> = (0..bs * d)
        .map(|e| f16::from_f32(v.get(e / d).copied().unwrap_or(0.0)))
        .collect();
    let (_, key) = tensor(&keys, &[1, bs, 1, d], c.dtype);
    let (_, weights) = tensor(&vec![1f32; s1 * n1], &[1, s1, n1], DT_F32);
    let (_, seq_k) = tensor(&[5i32], &[1], DT_I32);
    let (_, table) = tensor(&[0i32], &[1, 1], DT_I32);
    let (out_mem, out) = tensor(&vec![7i32; s1 * c.count], &[1, s1, 1, c.count], DT_I32);
    let (_, vals) = tensor(
        &vec![f16::ZERO; s1 * c.count],
        &[1, s1, 1, c.count],
        c.dtype,
    );
    let (mut ws, mut exec) = (0u64, null_mut());
    // SAFETY: handles from this emulator; C-string layouts; out-pointers to locals.
    let st = unsafe {
        aclnnLightningIndexerGetWorkspaceSize(
            query,
            key,
            weights,
            null(),
            seq_k,
            table,
            c"BSND".as_ptr(),
            c"PA_BSND".as_ptr(),
            c.count as i64,
            3,
            i64::MAX,
            i64::MAX,
            c.return_values,
            out,
            vals,
            &mut ws,
            &mut exec,
        )
    };
    if st != 0 {
        return Err(st);
    }
    launch(aclnnLightningIndexer, ws, exec, s);
    Ok(download(out_mem, s1 * c.count))
}

#[test]
fn lightning_indexer_sorts_stably_by_descending_score_under_the_causal_limit() {
    // Row 0 sees positions < 5 - 2 + 0 + 1 = 4: scores 64, 256, 256, 0 -> 1, 2 (the tie
    // in position order), 0, 3. Row 1 sees all 5: 1, 2, 4, 0 (golden
    // cal_atten_per_batch_b16: stable sort of -score, relu, create_mask).
    assert_eq!(li(LiCall::default()).unwrap(), [1, 2, 0, 3, 1, 2, 4, 0]);
    // sparseCount beyond the positions: -1 after them.
    assert_eq!(
        li(LiCall {
            count: 6,
            ..Default::default()
        })
        .unwrap(),
        [1, 2, 0, 3, -1, -1, 1, 2, 4, 0, 3, -1]
    );
}

#[test]
fn lightning_indexer_rejects_what_its_doc_and_tiling_reject() {
    let tiling = ACLNN_ERR_INNER_TILING_ERROR;
    for (call, want, what) in [
        (
            LiCall {
                n1: 65,
                ..Default::default()
            },
            tiling,
            "65 query heads on A2/A3",
        ),
        (
            LiCall {
                d: 64,
                ..Default::default()
            },
            tiling,
            "head dim 64",
        ),
        (
            LiCall {
                block: 8,
                ..Default::default()
            },
            tiling,
            "block size 8",
        ),
        (
            LiCall {
                count: 2049,
                ..Default::default()
            },
            tiling,
            "sparseCount 2049",
        ),
        (
            LiCall {
                return_values: true,
                ..Default::default()
            },
            tiling,
            "returnValues with PA_BSND",
        ),
        (
            LiCall {
                dtype: DT_F32,
                ..Default::default()
            },
            ACLNN_ERR_PARAM_INVALID,
            "FLOAT query",
        ),
    ] {
        assert_eq!(li(call).err(), Some(want), "{what}: {}", recent());
    }
}
