//! An op that fails after it has queued earlier aclnn steps on the stream: the typed error
//! comes back, none of its temporaries is freed while those steps may still use them (the
//! emulator fails a task that touches freed memory with "use after free" at synchronize),
//! nothing leaks, and the backend keeps working.
//!
//! The failure is injected with the emulator's `MOEMLA_CANN_EMULATOR_REJECT` (the named op's
//! `GetWorkspaceSize` fails with ACLNN_ERR_INNER_TILING_ERROR). The variable is
//! process-wide, so this binary holds one test, which runs the cases one after another.

mod common;

use moemla_core::{
    ops, Backend, DType, Error, ExpertsParams, HostTensor, MlaDecodeParams, Result, RouteParams,
};

const REJECT: &str = "MOEMLA_CANN_EMULATOR_REJECT";

/// Device bytes in use, from the emulator's `aclrtGetMemInfo` (the library the backend
/// loaded: dlopen of the same path shares its state).
fn used_bytes(lib: &libloading::Library) -> usize {
    type MemInfo = unsafe extern "C" fn(i32, *mut usize, *mut usize) -> i32;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: the emulator exports aclrtGetMemInfo with this C signature; out-pointers are
    // locals.
    unsafe {
        let get = lib
            .get::<MemInfo>(b"aclrtGetMemInfo\0")
            .expect("aclrtGetMemInfo");
        assert_eq!(get(1, &mut free, &mut total), 0);
    }
    total - free
}

/// Accesses to memory freed while still in use, as counted by the emulator (each also fails
/// its task at synchronize, but a caller may not report that failure).
fn use_after_free_count(lib: &libloading::Library) -> u64 {
    // SAFETY: exported by the emulator with this signature; no arguments.
    unsafe {
        lib.get::<unsafe extern "C" fn() -> u64>(b"moemla_emulator_use_after_free_count\0")
            .expect("moemla_emulator_use_after_free_count")()
    }
}

/// Runs `op` once normally, once with `reject` failing partway, and once more normally.
fn check_failure_midway(
    be: &dyn Backend,
    lib: &libloading::Library,
    reject: &str,
    op: &dyn Fn() -> Result<Vec<HostTensor>>,
) {
    let want = op().unwrap_or_else(|e| panic!("{reject}: before the failure: {e}"));
    be.synchronize().unwrap();
    let before = used_bytes(lib);
    let freed_uses = use_after_free_count(lib);

    std::env::set_var(REJECT, reject);
    let result = op();
    std::env::remove_var(REJECT);
    match &result {
        Err(Error::Device { call, message, .. }) => {
            assert_eq!(call, &format!("{reject}GetWorkspaceSize"));
            assert!(message.contains(REJECT), "{message}");
        }
        other => panic!("{reject}: expected a Device error, got {other:?}"),
    }
    // The op waited for the steps it had queued, then freed its temporaries.
    assert_eq!(
        used_bytes(lib),
        before,
        "{reject}: the failed op's temporaries were not all freed"
    );
    be.synchronize()
        .unwrap_or_else(|e| panic!("{reject}: a queued step failed: {e}"));
    assert_eq!(
        use_after_free_count(lib),
        freed_uses,
        "{reject}: a queued step touched memory freed while it was queued"
    );

    let again = op().unwrap_or_else(|e| panic!("{reject}: after the failure: {e}"));
    assert_eq!(want.len(), again.len());
    for (w, a) in want.iter().zip(&again) {
        assert_eq!(w.as_bytes(), a.as_bytes(), "{reject}: results changed");
    }
}

#[test]
fn op_failing_partway_frees_its_temporaries_only_after_the_stream_ran() {
    if std::env::var_os("MOEMLA_ASCEND_TEST_REAL").is_some_and(|v| v == "1") {
        println!("skipped: fault injection needs the CANN emulator");
        return;
    }
    let be = common::backend();
    let lib = {
        // SAFETY: the emulator library; loading it runs no initialisers with preconditions.
        unsafe { libloading::Library::new(common::emulator_path()) }.expect("emulator")
    };
    let baseline = used_bytes(&lib);
    run_cases(&be, &lib);
    drop(be);
    assert_eq!(used_bytes(&lib), baseline, "device memory leaked");
}

/// Each op, failing at an early and at a late step.
fn run_cases(be: &dyn Backend, lib: &libloading::Library) {
    // moe_route, F16 logits: Cast, MoeGatingTopK (then the host finishes the weights).
    let (t, e) = (5, 160);
    let logits = be
        .upload(
            &HostTensor::from_f32_as([t, e], &common::values(3, t * e, -4.0, 4.0), DType::F16)
                .unwrap(),
        )
        .unwrap();
    let route = || {
        let out = ops::moe_route(be, &logits, None, &RouteParams::deepseek_v2())?;
        Ok(vec![
            be.download(&out.topk_ids)?,
            be.download(&out.topk_weights)?,
        ])
    };
    for reject in ["aclnnCast", "aclnnMoeGatingTopK"] {
        check_failure_midway(be, lib, reject, &route);
    }

    // moe_experts, BF16: InitRoutingV2, Cast, GMM, SwiGlu, GMM, Cast, FinalizeRoutingV2, Cast.
    let (t, h, i, e, k) = (5, 64, 32, 8, 3);
    let up = |seed, dims: &[usize], lo, hi| {
        let n = dims.iter().product();
        let host = HostTensor::from_f32_as(dims, &common::values(seed, n, lo, hi), DType::BF16);
        be.upload(&host.unwrap()).unwrap()
    };
    let x = up(21, &[t, h], -1.0, 1.0);
    let w13 = up(22, &[e, 2 * i, h], -0.2, 0.2);
    let w2 = up(23, &[e, h, i], -0.2, 0.2);
    let ids: Vec<i32> = (0..t * k).map(|n| (n * 3 % e) as i32).collect();
    let ids = be
        .upload(&HostTensor::from_slice([t, k], &ids).unwrap())
        .unwrap();
    let wts = up(24, &[t, k], 0.0, 1.0);
    let wts = be.upload(&be.download(&wts).unwrap().to_dtype(DType::F32).unwrap());
    let wts = wts.unwrap();
    let experts = || {
        let y = ops::moe_experts(be, &x, &w13, &w2, &ids, &wts, &ExpertsParams::default())?;
        Ok(vec![be.download(&y)?])
    };
    for reject in ["aclnnSwiGlu", "aclnnMoeFinalizeRoutingV2"] {
        check_failure_midway(be, lib, reject, &experts);
    }

    // mla_decode, F16, one query: 4 InplaceCopy, FIA, then the lse pass.
    let (bs, seqlen) = (16, 20i32);
    let q = up(1, &[1, 1, 16, 576], -1.0, 1.0);
    let q = be.upload(&be.download(&q).unwrap().to_dtype(DType::F16).unwrap());
    let q = q.unwrap();
    let kv = up(2, &[2, bs, 1, 576], -1.0, 1.0);
    let kv = be.upload(&be.download(&kv).unwrap().to_dtype(DType::F16).unwrap());
    let kv = kv.unwrap();
    let table = be
        .upload(&HostTensor::from_slice([1, 2], &[1i32, 0]).unwrap())
        .unwrap();
    let lens = be
        .upload(&HostTensor::from_slice([1], &[seqlen]).unwrap())
        .unwrap();
    let mla = || {
        let p = MlaDecodeParams::deepseek_v3();
        let out = ops::mla_decode(be, &q, &kv, &table, &lens, &p)?;
        Ok(vec![be.download(&out.o)?, be.download(&out.lse)?])
    };
    for reject in ["aclnnFusedInferAttentionScoreV3", "aclnnLogSumExp"] {
        check_failure_midway(be, lib, reject, &mla);
    }
}
