//! The backend's device plumbing against a host-only mock HIP runtime (tests/mock/mock_hip.c,
//! compiled here) plus the real hipRTC (Debian's ROCm 5.2 `libamdhip64.so.5`): device
//! discovery and properties in both hipDeviceProp_t layouts, memory round trips, hipRTC
//! compile -> code-object load -> kernel lookup, module and function caching, launch
//! geometry, and the rule that an op only enqueues (no hipStreamSynchronize, no
//! device-to-host copy, no free inside an op; index errors at the next synchronize or
//! download). The mock's stream runs its queue only when synchronized, and its kernels do
//! nothing but their error flags, so op outputs are not checked here (tests/suite.rs does
//! that on a real device).
//!
//! The only test of this binary (its own process): it sets `MOCK_HIP_LOG`. Skips without
//! clang-19 or hipRTC unless `MOEMLA_REQUIRE_TOOLCHAINS` names `clang-hip` / `hiprtc`.

mod common;

use common::{build_mock, DEBIAN_HIP};
use moemla_core::{
    ops, Backend, DType, Error, ExpertsParams, HostTensor, MlaDecodeParams, Op, RouteParams, Shape,
};
use moemla_hip::flavour::{Candidate, Flavour, SearchList};
use moemla_hip::HipBackend;
use std::path::{Path, PathBuf};

fn open(runtime: &Path) -> HipBackend {
    let search = SearchList {
        runtime: vec![Candidate {
            path: runtime.to_path_buf(),
            flavour: Flavour::Rocm,
        }],
        hiprtc: vec![Candidate {
            path: PathBuf::from(DEBIAN_HIP),
            flavour: Flavour::Rocm,
        }],
    };
    HipBackend::with_search(&search, 0).unwrap_or_else(|e| panic!("mock device: {e}"))
}

/// The runtime calls logged since the last look.
fn calls(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    std::fs::write(log, "").unwrap();
    text.lines().map(str::to_string).collect()
}

/// What an op must never do: wait for the stream, copy to the host, or free memory the
/// stream may still use.
fn assert_enqueued_only(what: &str, calls: &[String]) {
    for bad in ["sync", "d2h", "free"] {
        assert!(
            !calls.iter().any(|c| c.starts_with(bad)),
            "{what}: {bad} inside the op: {calls:?}"
        );
    }
}

fn upload(b: &HipBackend, dims: &[usize], dtype: DType) -> moemla_core::DeviceTensor {
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    b.upload(&HostTensor::from_f32_as(dims, &values, dtype).unwrap())
        .unwrap()
}

fn upload_i32(b: &HipBackend, dims: &[usize], values: &[i32]) -> moemla_core::DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, values).unwrap())
        .unwrap()
}

#[test]
fn mock_device_is_discovered_and_its_ops_only_enqueue() {
    let dir = std::env::temp_dir().join(format!("moemla-hip-mock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(r0600) = build_mock(&dir, &[], "libmock_hip_r0600.so") else {
        return;
    };
    let r0000 = build_mock(&dir, &["-DMOCK_R0000"], "libmock_hip_r0000.so").unwrap();
    let log = dir.join("launches.log");
    std::env::set_var("MOCK_HIP_LOG", &log);

    // Properties, read through both hipDeviceProp_t layouts.
    for lib in [&r0000, &r0600] {
        let b = open(lib);
        let p = b.props();
        assert_eq!(p.name, "Mock MI250X");
        assert_eq!(p.arch, "gfx90a:sramecc+:xnack-", "{}", lib.display());
        assert_eq!(p.arch_base(), "gfx90a");
        assert_eq!((p.compute_units, p.warp_size), (110, 64));
        assert_eq!(
            (p.max_threads_per_block, p.max_shared_per_block),
            (1024, 65536)
        );
        assert_eq!(p.memory_bytes, 64 << 30);
        let info = b.info();
        assert_eq!(info.vendor, "AMD ROCm");
        assert_eq!(info.device, "Mock MI250X (gfx90a:sramecc+:xnack-)");
        assert_eq!(info.memory_bytes, Some(64 << 30));
        assert_eq!(
            info.verification.kind,
            moemla_core::VerificationKind::CompileOnly
        );
    }
    let b = open(&r0600);

    // Memory: zero-filled allocation and an exact round trip.
    let zeros = b
        .alloc_zeroed(&Shape::new(vec![3, 5]), DType::BF16)
        .unwrap();
    assert_eq!(b.download(&zeros).unwrap().as_bytes(), &[0u8; 30]);
    let host =
        HostTensor::from_f32_as([2, 3], &[1.5, -2.0, 0.1, 3.0e5, -0.0, 7.25], DType::BF16).unwrap();
    let back = b.download(&b.upload(&host).unwrap()).unwrap();
    assert_eq!(back, host);

    // moe_route: compiled by hipRTC, loaded and looked up once; an op makes the device
    // current once, allocates its outputs and launches: nothing else, per launch nothing
    // but the launch.
    let logits = upload(&b, &[5, 64], DType::BF16);
    let bias = upload(&b, &[64], DType::F32);
    let v2 = RouteParams::deepseek_v2();
    calls(&log);
    ops::moe_route(&b, &logits, Some(&bias), &v2).unwrap();
    ops::moe_route(&b, &logits, None, &v2).unwrap();
    let route = format!(
        "moemla_moe_route_bf16 grid=5,1,1 block=256,1,1 shared={} scalars=64,6,8,3,1,0,0,16 vocab=0",
        moemla_kernel_plan::route::shared_bytes(64, 6, 8, 256).unwrap()
    );
    let outputs = ["setdevice", "malloc 120", "malloc 120"];
    let mut want: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    want.extend([
        "load".into(),
        "getfn moemla_moe_route_bf16".into(),
        route.clone(),
    ]);
    want.extend(outputs.iter().map(|s| s.to_string()));
    want.push(route);
    assert_eq!(calls(&log), want);

    // moe_experts: T=3, k=2, E=4, H=64, I=32 -> 6 slots, max_tiles = (6 + 4*63) / 64 = 4.
    let x = upload(&b, &[3, 64], DType::F16);
    let w13 = upload(&b, &[4, 64, 64], DType::F16);
    let w2 = upload(&b, &[4, 64, 32], DType::F16);
    let ids = upload_i32(&b, &[3, 2], &[0, 3, -1, 2, 1, 1]);
    let weights = upload(&b, &[3, 2], DType::F32);
    let experts = |ids: &moemla_core::DeviceTensor| {
        ops::moe_experts(&b, &x, &w13, &w2, ids, &weights, &ExpertsParams::default())
    };
    calls(&log);
    experts(&ids).unwrap();
    let first = calls(&log);
    assert_enqueued_only("moe_experts", &first);
    // y, the workspace, the error-flag chunk (cleared to all ones), the modules' kernels.
    assert_eq!(first[..2], ["setdevice", "malloc 384"]);
    assert_eq!(first[3..5], ["malloc 4096", "memset 4096"]);
    let launches = [
        "moemla_moe_align grid=1,1,1 block=1024,1,1 shared=48",
        "moemla_moe_gate_up_f16 grid=4,1,1 block=128,1,1 shared=0",
        "moemla_moe_down_f16 grid=4,1,1 block=128,1,1 shared=0",
        "moemla_moe_combine_f16 grid=3,1,1 block=256,1,1 shared=0",
    ];
    assert!(first.ends_with(&[
        "getfn moemla_moe_combine_f16".to_string(),
        launches[3].to_string()
    ]));
    // Again: the workspace and flags are reused, the functions cached.
    experts(&ids).unwrap();
    let mut want = vec!["setdevice".to_string(), "malloc 384".to_string()];
    want.extend(launches.iter().map(|s| s.to_string()));
    assert_eq!(calls(&log), want);

    // An index error surfaces at the next synchronize, naming the op, the argument, the
    // first bad position and its value; the op itself returned at once.
    let bad = upload_i32(&b, &[3, 2], &[0, 3, -1, 1, -7, 9]);
    calls(&log);
    experts(&bad).expect("enqueued; checked at the next synchronize");
    assert_enqueued_only("moe_experts with a bad id", &calls(&log));
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::MoeExperts,
            arg: "topk_ids",
            index: vec![2, 0],
            value: -7,
            valid: "[-1, 4)".into(),
        }),
        "the first bad slot, [2, 0], holds -7 (the next, 9 at [2, 1], is not reported)"
    );
    // One wait, one read of the three experts calls' flags, one reset.
    let sync: Vec<_> = calls(&log).into_iter().filter(|c| c != "free").collect();
    assert_eq!(sync, ["setdevice", "sync", "d2h 24", "sync", "memset 24"]);
    b.synchronize().expect("reported once");

    // mla_decode: B=2, Sq=1, Hq=4, Hkv=1, Dqk=80, Dv=64, 6 blocks of 16, 3 per sequence.
    let q = upload(&b, &[2, 1, 4, 80], DType::F32);
    let kv = upload(&b, &[6, 16, 1, 80], DType::F32);
    let table = upload_i32(&b, &[2, 3], &[0, 1, 2, 3, 4, 5]);
    let seqlens = upload_i32(&b, &[2], &[40, 17]);
    let mut params = MlaDecodeParams::deepseek_v3();
    params.softmax_scale = 0.125;
    params.head_dim_v = 64;
    calls(&log);
    let out = ops::mla_decode(&b, &q, &kv, &table, &seqlens, &params).unwrap();
    let lines = calls(&log);
    assert_enqueued_only("mla_decode", &lines);
    let launched: Vec<_> = lines.iter().filter(|l| l.starts_with("moemla_")).collect();
    assert_eq!(launched.len(), 3, "{lines:?}");
    assert_eq!(
        launched[0],
        "moemla_mla_check grid=1,1,1 block=256,1,1 shared=0"
    );
    assert!(
        launched[1].starts_with("moemla_mla_decode_f32 grid=")
            && launched[1].contains(",1,2 block=256,1,1 shared="),
        "{}",
        launched[1]
    );
    assert_eq!(
        launched[2],
        "moemla_mla_combine_f32 grid=8,1,1 block=128,1,1 shared=0"
    );
    assert_eq!(b.download(&out.lse).unwrap().dims(), [2, 4, 1]);

    // A bad sequence length is reported by the next download, before any copy of it.
    let too_long = upload_i32(&b, &[2], &[40, 49]);
    ops::mla_decode(&b, &q, &kv, &table, &too_long, &params).unwrap();
    calls(&log);
    assert_eq!(
        b.download(&out.o).unwrap_err(),
        Error::IndexOutOfRange {
            op: Op::MlaDecode,
            arg: "cache_seqlens",
            index: vec![1],
            value: 49,
            valid: "[0, 48] (max_blocks * block_size)".into(),
        }
    );
    assert!(
        !calls(&log).contains(&"d2h 2048".to_string()),
        "o copied despite the error"
    );
    assert_eq!(b.download(&out.o).unwrap().dims(), [2, 1, 4, 64]);

    // Contract v2, hash routing with sqrt-softplus scores (DeepSeek-V4's first layers): the
    // route and the flag resolve are enqueued, nothing waited for or read back.
    let logits = upload(&b, &[3, 16], DType::BF16);
    let input_ids = upload_i32(&b, &[3], &[1, 0, 1]);
    let table = upload_i32(&b, &[2, 2], &[4, 9, 7, 3]);
    let v4_hash = RouteParams {
        score_func: moemla_core::ScoreFunc::Sqrtsoftplus,
        top_k: 2,
        n_group: 1,
        topk_group: 1,
        group_select: moemla_core::GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.5,
    };
    let mut inputs = ops::RouteInputs::new(&logits);
    inputs.input_ids = Some(&input_ids);
    inputs.tid2eid = Some(&table);
    calls(&log);
    ops::moe_route_with(&b, inputs, &v4_hash).unwrap();
    let lines = calls(&log);
    assert_enqueued_only("moe_route with hash routing", &lines);
    let launched: Vec<_> = lines.iter().filter(|l| l.starts_with("moemla_")).collect();
    assert_eq!(
        launched,
        [
            &format!(
                "moemla_moe_route_bf16 grid=3,1,1 block=256,1,1 shared={} scalars=16,2,1,1,2,0,1,1.5 vocab=2",
                moemla_kernel_plan::route::shared_bytes(16, 2, 1, 256).unwrap()
            ),
            "moemla_moe_route_hash_resolve grid=1,1,1 block=1,1,1 shared=0",
        ]
    );

    // Contract v2, FP8 experts with w8a8 (fp8_block128, UE8M0 scales): x quantized, the
    // w8a8 GEMMs around act's quantization, combine; enqueued only.
    let x = upload(&b, &[3, 200], DType::F16);
    let codes = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        let bytes: Vec<u8> = (0..n).map(|i| (i % 0x7e) as u8).collect();
        let host =
            HostTensor::from_bytes(moemla_core::Shape::new(dims.to_vec()), DType::F8E4M3, bytes);
        b.upload(&host.unwrap()).unwrap()
    };
    let (w13, w2) = (codes(&[4, 272, 200]), codes(&[4, 200, 136]));
    let (s13, s2) = (
        upload(&b, &[4, 3, 2], DType::F32),
        upload(&b, &[4, 2, 2], DType::F32),
    );
    let w8a8 = ExpertsParams {
        activation_quant: moemla_core::ActivationQuant::Fp8Block128,
        activation_scale: moemla_core::ActivationScale::Ue8m0,
        ..ExpertsParams::default()
    };
    calls(&log);
    let inputs = ops::ExpertsInputs::new(&x, &w13, &w2, &ids, &weights).with_scales(&s13, &s2);
    ops::moe_experts_with(&b, inputs, &w8a8).unwrap();
    let lines = calls(&log);
    assert_enqueued_only("moe_experts w8a8", &lines);
    let launched: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("moemla_"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        launched,
        [
            "moemla_moe_align",
            "moemla_moe_quant_f16",
            "moemla_moe_gate_up_w8a8_f16",
            "moemla_moe_quant_f32",
            "moemla_moe_down_w8a8_f16",
            "moemla_moe_combine_f16"
        ]
    );
    b.synchronize().expect("valid ids");

    // Contract v2, mla_sparse_decode (B=1, Sq=2, Hq=4, topk=8, a sink, no lengths): the
    // index check, the decode over the listed slots and the combine; enqueued only.
    let q = upload(&b, &[1, 2, 4, 80], DType::F16);
    let kv = upload(&b, &[6, 16, 1, 80], DType::F16);
    let indices = upload_i32(
        &b,
        &[1, 2, 8],
        &[0, 5, -1, 95, 5, 17, 40, 3, 1, 2, 3, -1, -1, 60, 61, 62],
    );
    let sink = upload(&b, &[4], DType::F32);
    let mut inputs = ops::SparseDecodeInputs::new(&q, &kv, &indices);
    inputs.attn_sink = Some(&sink);
    let sparse = moemla_core::SparseDecodeParams {
        softmax_scale: 0.125,
        head_dim_v: 64,
        kv_format: moemla_core::KvFormat::Dense,
    };
    calls(&log);
    let out = ops::mla_sparse_decode(&b, inputs, &sparse).unwrap();
    let lines = calls(&log);
    assert_enqueued_only("mla_sparse_decode", &lines);
    let launched: Vec<_> = lines.iter().filter(|l| l.starts_with("moemla_")).collect();
    assert_eq!(launched.len(), 3, "{lines:?}");
    assert_eq!(
        launched[0],
        "moemla_mla_sparse_check grid=1,1,1 block=256,1,1 shared=0"
    );
    assert!(
        launched[1].starts_with("moemla_mla_sparse_decode_f16 grid=1,1,2 block=256,1,1 shared="),
        "{}",
        launched[1]
    );
    assert_eq!(
        launched[2],
        "moemla_mla_sparse_combine_f16 grid=8,1,1 block=128,1,1 shared=0"
    );
    assert_eq!(b.download(&out.lse).unwrap().dims(), [1, 4, 2]);

    // A wave32 device (RDNA) is described but runs nothing: the kernels assume 64 lanes.
    std::env::set_var("MOCK_HIP_WARP", "32");
    let b = open(&r0600);
    assert_eq!(b.props().warp_size, 32);
    assert!(b.info().supported.is_empty());
    let logits = upload(&b, &[5, 64], DType::F32);
    match ops::moe_route(&b, &logits, None, &v2) {
        Err(moemla_core::Error::Unsupported { backend, what, .. }) => {
            assert_eq!(backend, "hip");
            assert_eq!(what, "wavefront of 32 lanes (gfx90a:sramecc+:xnack-)");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(!calls(&log).iter().any(|c| c.starts_with("moemla_")));

    std::fs::remove_dir_all(&dir).ok();
}
