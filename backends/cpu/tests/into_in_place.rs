//! The CPU's `_into` ops write the caller's outputs directly (no whole-output temporary and
//! copy): the results equal the allocating ops' bit for bit in every float dtype, every
//! element of a reused output is overwritten, and a direct call of the backend method with
//! aliased or misshapen outputs is an error, never a write through two references.

use moemla_core::calls::MoeRouteCall;
use moemla_core::ops::{self, ExpertsInputs, RouteInputs, SparseDecodeInputs};
use moemla_core::{
    Backend, DType, DeviceTensor, Error, ExpertsParams, HostTensor, MlaDecodeParams, RouteParams,
    SparseDecodeParams,
};
use moemla_cpu::{CpuBackend, CpuBuffer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The system allocator, recording the largest allocation made while `WATCHING` is set.
struct Largest;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` unchanged; the bookkeeping touches atomics only.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::SeqCst) {
            LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// Deterministic values in about [-2.5, 2.5].
fn seq(n: usize, s: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * s * 0.5)
        .collect()
}

fn up(cpu: &CpuBackend, dims: &[usize], v: &[f32], dtype: DType) -> DeviceTensor {
    let host = HostTensor::from_slice(dims, v).unwrap();
    cpu.upload(&host.to_dtype(dtype).unwrap()).unwrap()
}

fn up_i32(cpu: &CpuBackend, dims: &[usize], v: &[i32]) -> DeviceTensor {
    cpu.upload(&HostTensor::from_slice(dims, v).unwrap())
        .unwrap()
}

/// An output of `dims` filled with NaN (so an element left unwritten shows).
fn poisoned(cpu: &CpuBackend, dims: &[usize], dtype: DType) -> DeviceTensor {
    let n = dims.iter().product();
    up(cpu, dims, &vec![f32::NAN; n], dtype)
}

fn addr(t: &DeviceTensor) -> usize {
    t.buffer::<CpuBuffer>("cpu", "test", "t").unwrap().addr()
}

fn bytes(cpu: &CpuBackend, t: &DeviceTensor) -> Vec<u8> {
    cpu.download(t).unwrap().as_bytes().to_vec()
}

#[test]
fn into_ops_equal_the_allocating_ops_in_every_float_dtype() {
    let cpu = CpuBackend::new();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // moe_route (outputs I32 / F32 whatever the logits dtype).
        let logits = up(&cpu, &[5, 8], &seq(40, 1.0), dtype);
        let p = RouteParams {
            top_k: 3,
            ..RouteParams::deepseek_v2_lite()
        };
        let ids = up_i32(&cpu, &[5, 3], &[-9; 15]);
        let w = poisoned(&cpu, &[5, 3], DType::F32);
        let before = (addr(&ids), addr(&w));
        ops::moe_route_into(&cpu, RouteInputs::new(&logits), &p, &ids, &w).unwrap();
        let want = ops::moe_route(&cpu, &logits, None, &p).unwrap();
        assert_eq!(bytes(&cpu, &ids), bytes(&cpu, &want.topk_ids), "{dtype}");
        assert_eq!(bytes(&cpu, &w), bytes(&cpu, &want.topk_weights), "{dtype}");
        assert_eq!((addr(&ids), addr(&w)), before);

        // moe_experts (token 1 routes nowhere: its row must be overwritten with zeros).
        let (t, h, i, e) = (3, 4, 2, 2);
        let x = up(&cpu, &[t, h], &seq(t * h, 0.7), dtype);
        let w13 = up(&cpu, &[e, 2 * i, h], &seq(e * 2 * i * h, 0.2), dtype);
        let w2 = up(&cpu, &[e, h, i], &seq(e * h * i, 0.3), dtype);
        let tid = up_i32(&cpu, &[t, 2], &[1, 0, -1, -1, 0, 1]);
        let tw = up(&cpu, &[t, 2], &[0.5, 0.25, 1.0, 1.0, 2.0, -1.0], DType::F32);
        let y = poisoned(&cpu, &[t, h], dtype);
        let inputs = ExpertsInputs::new(&x, &w13, &w2, &tid, &tw);
        let p = ExpertsParams::default();
        ops::moe_experts_into(&cpu, inputs, &p, &y).unwrap();
        let want = ops::moe_experts(&cpu, &x, &w13, &w2, &tid, &tw, &p).unwrap();
        assert_eq!(bytes(&cpu, &y), bytes(&cpu, &want), "{dtype}");
        let got = cpu.download(&y).unwrap().to_f32_vec().unwrap();
        assert_eq!(&got[h..2 * h], &[0.0; 4]);

        // mla_decode (sequence 1 is empty: o 0 and lse -inf must replace the NaNs).
        let (b, hq, d, dv, bs) = (2, 2, 4, 2, 4);
        let cache = up(&cpu, &[2, bs, 1, d], &seq(2 * bs * d, 0.25), dtype);
        let table = up_i32(&cpu, &[b, 1], &[1, 0]);
        let lens = up_i32(&cpu, &[b], &[3, 0]);
        let q = up(&cpu, &[b, 1, hq, d], &seq(b * hq * d, 0.5), dtype);
        let p = MlaDecodeParams {
            softmax_scale: 0.5,
            causal: false,
            head_dim_v: dv,
            kv_format: Default::default(),
        };
        let o = poisoned(&cpu, &[b, 1, hq, dv], dtype);
        let lse = poisoned(&cpu, &[b, hq, 1], DType::F32);
        ops::mla_decode_into(&cpu, &q, &cache, &table, &lens, &p, &o, &lse).unwrap();
        let want = ops::mla_decode(&cpu, &q, &cache, &table, &lens, &p).unwrap();
        assert_eq!(bytes(&cpu, &o), bytes(&cpu, &want.o), "{dtype}");
        assert_eq!(bytes(&cpu, &lse), bytes(&cpu, &want.lse), "{dtype}");
        let got = cpu.download(&lse).unwrap().to_f32_vec().unwrap();
        assert_eq!(got[2..], [f32::NEG_INFINITY; 2]);
        assert!(got[..2].iter().all(|v| v.is_finite()));

        // mla_sparse_decode (query row 1 lists no valid slot).
        let indices = up_i32(&cpu, &[b, 1, 3], &[0, 5, -1, -1, -1, -1]);
        let sink = up(&cpu, &[hq], &[0.5, -1.0], DType::F32);
        let p = SparseDecodeParams {
            softmax_scale: 0.5,
            head_dim_v: dv,
            kv_format: Default::default(),
        };
        let inputs = SparseDecodeInputs::new(&q, &cache, &indices).with_attn_sink(&sink);
        let o = poisoned(&cpu, &[b, 1, hq, dv], dtype);
        let lse = poisoned(&cpu, &[b, hq, 1], DType::F32);
        ops::mla_sparse_decode_into(&cpu, inputs, &p, &o, &lse).unwrap();
        let want = ops::mla_sparse_decode(&cpu, inputs, &p).unwrap();
        assert_eq!(bytes(&cpu, &o), bytes(&cpu, &want.o), "{dtype}");
        assert_eq!(bytes(&cpu, &lse), bytes(&cpu, &want.lse), "{dtype}");
        let got = cpu.download(&o).unwrap().to_f32_vec().unwrap();
        assert_eq!(got[4..], [0.0; 4]);
        assert!(got[..4].iter().any(|&v| v != 0.0));
    }
}

#[test]
fn moe_route_into_allocates_nothing_the_size_of_its_outputs() {
    let cpu = CpuBackend::new();
    let (t, e, k) = (4096, 16, 8);
    let logits = up(&cpu, &[t, e], &seq(t * e, 0.1), DType::F32);
    let ids = cpu.alloc_zeroed(&[t, k].into(), DType::I32).unwrap();
    let w = cpu.alloc_zeroed(&[t, k].into(), DType::F32).unwrap();
    let p = RouteParams {
        top_k: k,
        ..RouteParams::deepseek_v2_lite()
    };
    let output_bytes = t * k * 4;
    WATCHING.store(true, Ordering::SeqCst);
    let done = ops::moe_route_into(&cpu, RouteInputs::new(&logits), &p, &ids, &w);
    WATCHING.store(false, Ordering::SeqCst);
    done.unwrap();
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest < output_bytes / 8,
        "an allocation of {largest} bytes (outputs: {output_bytes} bytes each)"
    );
    // What it wrote is the allocating op's result.
    let want = ops::moe_route(&cpu, &logits, None, &p).unwrap();
    assert_eq!(bytes(&cpu, &ids), bytes(&cpu, &want.topk_ids));
    assert_eq!(bytes(&cpu, &w), bytes(&cpu, &want.topk_weights));
}

/// Picks the two outputs handed to the CPU's `moe_route_into` from (ids, weights, logits,
/// spare).
type Swap = fn([&DeviceTensor; 4]) -> (&DeviceTensor, &DeviceTensor);

/// The CPU backend, except that `moe_route_into` hands the CPU's method the outputs
/// `swap` picks from (the caller's ids, the caller's weights, the logits, a spare tensor):
/// what a buggy wrapper calling the trait method directly could do.
struct Rewiring {
    cpu: CpuBackend,
    spare: DeviceTensor,
    swap: Swap,
}

impl Backend for Rewiring {
    fn name(&self) -> &str {
        self.cpu.name()
    }
    fn info(&self) -> moemla_core::BackendInfo {
        self.cpu.info()
    }
    fn alloc_zeroed(
        &self,
        shape: &moemla_core::Shape,
        dtype: DType,
    ) -> moemla_core::Result<DeviceTensor> {
        self.cpu.alloc_zeroed(shape, dtype)
    }
    fn upload(&self, host: &HostTensor) -> moemla_core::Result<DeviceTensor> {
        self.cpu.upload(host)
    }
    fn download(&self, t: &DeviceTensor) -> moemla_core::Result<HostTensor> {
        self.cpu.download(t)
    }
    fn synchronize(&self) -> moemla_core::Result<()> {
        Ok(())
    }
    fn moe_route_into(
        &self,
        call: &MoeRouteCall<'_>,
        ids: &DeviceTensor,
        weights: &DeviceTensor,
    ) -> moemla_core::Result<()> {
        let (a, b) = (self.swap)([ids, weights, call.logits, &self.spare]);
        self.cpu.moe_route_into(call, a, b)
    }
    fn moe_route(
        &self,
        call: &MoeRouteCall<'_>,
    ) -> moemla_core::Result<moemla_core::MoeRouteOutput> {
        self.cpu.moe_route(call)
    }
    fn moe_experts(
        &self,
        call: &moemla_core::calls::MoeExpertsCall<'_>,
    ) -> moemla_core::Result<DeviceTensor> {
        self.cpu.moe_experts(call)
    }
    fn mla_decode(
        &self,
        call: &moemla_core::calls::MlaDecodeCall<'_>,
    ) -> moemla_core::Result<moemla_core::MlaDecodeOutput> {
        self.cpu.mla_decode(call)
    }
}

#[test]
fn a_direct_backend_call_with_aliased_or_misshapen_outputs_is_an_error() {
    let cpu = CpuBackend::new();
    let logits = up(&cpu, &[2, 4], &seq(8, 1.0), DType::F32);
    let p = RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    let spare = cpu.alloc_zeroed(&[2, 3].into(), DType::F32).unwrap();
    let swaps: [Swap; 4] = [
        |[ids, _, _, _]| (ids, ids),
        |[ids, _, logits, _]| (ids, logits),
        |[ids, _, _, spare]| (ids, spare),
        |[ids, w, _, _]| (ids, w),
    ];
    for (n, swap) in swaps.into_iter().enumerate() {
        let backend = Rewiring {
            cpu: CpuBackend::new(),
            spare: spare.clone(),
            swap,
        };
        let ids = cpu.alloc_zeroed(&[2, 2].into(), DType::I32).unwrap();
        let w = cpu.alloc_zeroed(&[2, 2].into(), DType::F32).unwrap();
        let done = ops::moe_route_into(&backend, RouteInputs::new(&logits), &p, &ids, &w);
        if n == 3 {
            done.unwrap();
            let want = ops::moe_route(&cpu, &logits, None, &p).unwrap();
            assert_eq!(bytes(&cpu, &ids), bytes(&cpu, &want.topk_ids));
            continue;
        }
        let err = done.unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "swap {n}: {err}");
        assert_eq!(bytes(&cpu, &ids), vec![0; 16], "swap {n}");
    }
    assert_eq!(bytes(&cpu, &spare), vec![0; 24]);
    assert_eq!(
        cpu.download(&logits).unwrap().to_f32_vec().unwrap(),
        seq(8, 1.0)
    );
}
