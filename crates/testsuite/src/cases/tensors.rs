//! Memory and self-description: upload/download round trips, zeroed allocation, ops that
//! leave their inputs untouched, a consistent `info()`.

use crate::cases::experts::{ExpertsData, ExpertsDims};
use crate::cases::mla::{MlaProblem, MlaSpec};
use crate::harness::Ctx;
use crate::rng::Rng;
use moemla_core::{ops, DType, ExpertsParams, HostTensor, Op, RouteParams, Shape};

const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I32];
const SHAPES: [&[usize]; 4] = [&[1], &[3, 5], &[2, 3, 7], &[1, 1, 1, 1025]];

/// Any bytes (NaN payloads, subnormals, infinities included) come back bit-exact, with
/// their shape and dtype.
pub fn upload_download_round_trip(ctx: &Ctx<'_>) {
    let mut rng = Rng::new(0x7e);
    for dtype in DTYPES {
        for dims in SHAPES {
            let n = Shape::from(dims).elem_count() * dtype.size_in_bytes();
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let host = HostTensor::from_bytes(dims, dtype, bytes).expect("host tensor");
            let dev = ctx.upload(&host);
            assert_eq!((dev.dims(), dev.dtype()), (dims, dtype), "uploaded tensor");
            assert_eq!(dev.backend(), ctx.backend.name(), "uploaded tensor's owner");
            let back = ctx.backend.download(&dev).expect("download");
            assert!(back == host, "{dtype} {dims:?}: downloaded bytes differ");
        }
    }
    ctx.backend.synchronize().expect("synchronize");
}

/// `alloc_zeroed` gives a tensor of the asked shape and dtype holding zero bytes.
pub fn alloc_zeroed_is_zero(ctx: &Ctx<'_>) {
    for dtype in DTYPES {
        for dims in SHAPES {
            let shape = Shape::from(dims);
            let dev = ctx
                .backend
                .alloc_zeroed(&shape, dtype)
                .unwrap_or_else(|e| panic!("alloc_zeroed {dtype} {shape}: {e}"));
            assert_eq!((dev.dims(), dev.dtype()), (dims, dtype));
            let back = ctx.backend.download(&dev).expect("download");
            assert_eq!(
                back,
                HostTensor::zeros(dims, dtype).unwrap(),
                "{dtype} {shape} not zeroed"
            );
        }
    }
}

/// Each op, in each supported dtype, leaves every input tensor's bytes as uploaded.
pub fn ops_leave_inputs_unchanged(ctx: &Ctx<'_>) {
    let mut rng = Rng::new(0x7f);
    let unchanged = |what: &str, inputs: &[(HostTensor, moemla_core::DeviceTensor)]| {
        for (i, (host, dev)) in inputs.iter().enumerate() {
            let back = ctx.backend.download(dev).expect("download");
            assert!(back == *host, "{what}: input {i} was modified");
        }
    };
    for dtype in ctx.float_dtypes(Op::MoeRoute) {
        let logits = HostTensor::from_f32_as([4, 16], &rng.vec(64, -3.0, 3.0), dtype).unwrap();
        let bias = HostTensor::from_f32_as([16], &rng.vec(16, -0.5, 0.5), DType::F32).unwrap();
        let inputs = [
            (logits.clone(), ctx.upload(&logits)),
            (bias.clone(), ctx.upload(&bias)),
        ];
        let p = RouteParams {
            n_group: 4,
            topk_group: 2,
            top_k: 3,
            ..RouteParams::deepseek_v3()
        };
        ops::moe_route(ctx.backend, &inputs[0].1, Some(&inputs[1].1), &p).expect("moe_route");
        unchanged(&format!("moe_route {dtype}"), &inputs);
    }
    for dtype in ctx.float_dtypes(Op::MoeExperts) {
        let d = ExpertsDims {
            tokens: 5,
            hidden: 16,
            inter: 8,
            experts: 4,
            top_k: 2,
        };
        let data = ExpertsData::random(d, &mut rng);
        let ids: Vec<i32> = vec![0, 1, 2, -1, 3, 3, 1, 0, 2, 2];
        let hosts = [
            HostTensor::from_f32_as([5, 16], &data.x, dtype).unwrap(),
            HostTensor::from_f32_as([4, 16, 16], &data.w13, dtype).unwrap(),
            HostTensor::from_f32_as([4, 16, 8], &data.w2, dtype).unwrap(),
            HostTensor::from_slice([5, 2], &ids).unwrap(),
            HostTensor::from_f32_as([5, 2], &rng.vec(10, 0.1, 1.0), DType::F32).unwrap(),
        ];
        let inputs: Vec<_> = hosts.iter().map(|h| (h.clone(), ctx.upload(h))).collect();
        let t: Vec<_> = inputs.iter().map(|(_, d)| d).collect();
        ops::moe_experts(
            ctx.backend,
            t[0],
            t[1],
            t[2],
            t[3],
            t[4],
            &ExpertsParams::default(),
        )
        .expect("moe_experts");
        unchanged(&format!("moe_experts {dtype}"), &inputs);
    }
    for dtype in ctx.float_dtypes(Op::MlaDecode) {
        let spec = MlaSpec {
            s_q: 2,
            h_q: 4,
            h_kv: 1,
            d_qk: 24,
            d_v: 16,
            block_size: 4,
            seqlens: vec![9, 3],
            spare_blocks: 1,
            causal: true,
            softmax_scale: 0.2,
        };
        let pr = MlaProblem::random(&spec, &mut rng);
        let d = pr.dims;
        let hosts = [
            HostTensor::from_f32_as([d.batch, d.s_q, d.h_q, d.d_qk], &pr.q, dtype).unwrap(),
            HostTensor::from_f32_as([d.num_blocks, d.block_size, d.h_kv, d.d_qk], &pr.kv, dtype)
                .unwrap(),
            HostTensor::from_slice([d.batch, d.max_blocks], &pr.table).unwrap(),
            HostTensor::from_slice([d.batch], &pr.seqlens).unwrap(),
        ];
        let inputs: Vec<_> = hosts.iter().map(|h| (h.clone(), ctx.upload(h))).collect();
        let t: Vec<_> = inputs.iter().map(|(_, d)| d).collect();
        ops::mla_decode(ctx.backend, t[0], t[1], t[2], t[3], &pr.params).expect("mla_decode");
        unchanged(&format!("mla_decode {dtype}"), &inputs);
    }
}

/// `info()` names the backend as `name()` does, and lists each (op, dtype) at most once.
pub fn info_is_consistent(ctx: &Ctx<'_>) {
    assert_eq!(ctx.info.name, ctx.backend.name(), "info().name vs name()");
    let s = &ctx.info.supported;
    for (i, a) in s.iter().enumerate() {
        assert!(
            !s[i + 1..].contains(a),
            "{a:?} listed twice in info().supported"
        );
    }
}
