//! Self-test of the suite: the suite's own f64 reference, wrapped as a host backend, must
//! pass every test. This checks the suite's plumbing, generators, tolerances and error
//! expectations (not any real backend, which the backend crates instantiate).

use moemla_core::vendor::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    indices, Backend, BackendInfo, DType, DeviceBuffer, DeviceTensor, HostTensor, MlaDecodeOutput,
    MoeRouteOutput, OpSupport, Result, Shape, Verification, VerificationKind,
};
use moemla_testsuite::reference::{self, MlaDims};
use std::any::Any;
use std::sync::Arc;

const NAME: &str = "reference";

#[derive(Debug)]
struct HostBuf(HostTensor);

impl DeviceBuffer for HostBuf {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct ReferenceBackend;

fn host<'a>(t: &'a DeviceTensor, arg: &'static str) -> Result<&'a HostTensor> {
    Ok(&t.buffer::<HostBuf>(NAME, "reference", arg)?.0)
}

fn floats(t: &DeviceTensor, arg: &'static str) -> Result<Vec<f64>> {
    Ok(host(t, arg)?
        .to_f32_vec()?
        .into_iter()
        .map(f64::from)
        .collect())
}

fn wrap(h: HostTensor) -> DeviceTensor {
    let (shape, dtype) = (h.shape().clone(), h.dtype());
    DeviceTensor::new(Arc::new(HostBuf(h)), NAME.into(), shape, dtype)
}

fn output(dims: &[usize], values: &[f64], dtype: DType) -> Result<DeviceTensor> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Ok(wrap(HostTensor::from_f32_as(dims, &v, dtype)?))
}

impl Backend for ReferenceBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            vendor: "moemla".into(),
            device: "f64 reference".into(),
            device_kind: moemla_core::DeviceKind::Cpu,
            memory_bytes: None,
            supported: OpSupport::all_v1(),
            verification: Verification {
                kind: VerificationKind::Reference,
                detail: "suite self-test".into(),
            },
            notes: vec![],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        Ok(wrap(HostTensor::zeros(shape.clone(), dtype)?))
    }

    fn upload(&self, h: &HostTensor) -> Result<DeviceTensor> {
        Ok(wrap(h.clone()))
    }

    fn download(&self, t: &DeviceTensor) -> Result<HostTensor> {
        host(t, "tensor").cloned()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn moe_route(&self, c: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        let logits = floats(c.logits, "logits")?;
        let bias = c.bias.map(|b| floats(b, "bias")).transpose()?;
        let r = reference::moe_route(&logits, bias.as_deref(), c.tokens, c.experts, c.params);
        let ids: Vec<i32> = r.ids.iter().flatten().map(|&e| e as i32).collect();
        let w: Vec<f64> = r.weights.into_iter().flatten().collect();
        let dims = [c.tokens, c.params.top_k];
        Ok(MoeRouteOutput {
            topk_ids: wrap(HostTensor::from_slice(dims, &ids)?),
            topk_weights: output(&dims, &w, DType::F32)?,
        })
    }

    fn moe_experts(&self, c: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        let ids = host(c.topk_ids, "topk_ids")?.to_i32_vec()?;
        indices::check_topk_ids(c, &ids)?;
        let y = reference::moe_experts(
            &floats(c.x, "x")?,
            &floats(c.w13, "w13")?,
            &floats(c.w2, "w2")?,
            &ids,
            &floats(c.topk_weights, "topk_weights")?,
            c.tokens,
            c.hidden,
            c.inter,
            c.top_k,
        );
        output(&[c.tokens, c.hidden], &y, c.dtype)
    }

    fn mla_decode(&self, c: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let table = host(c.block_table, "block_table")?.to_i32_vec()?;
        let seqlens = host(c.cache_seqlens, "cache_seqlens")?.to_i32_vec()?;
        indices::check_mla_indices(c, &table, &seqlens)?;
        let d = MlaDims {
            batch: c.batch,
            s_q: c.s_q,
            h_q: c.h_q,
            h_kv: c.h_kv,
            d_qk: c.d_qk,
            d_v: c.d_v,
            num_blocks: c.num_blocks,
            block_size: c.block_size,
            max_blocks: c.max_blocks,
        };
        let q = floats(c.q, "q")?;
        let kv = floats(c.kv_cache, "kv_cache")?;
        let p = c.params;
        let r = reference::mla_decode(&q, &kv, &table, &seqlens, d, p.softmax_scale, p.causal);
        Ok(MlaDecodeOutput {
            o: output(&[c.batch, c.s_q, c.h_q, c.d_v], &r.o, c.dtype)?,
            lse: output(&[c.batch, c.h_q, c.s_q], &r.lse, DType::F32)?,
        })
    }
}

moemla_testsuite::backend_tests!(reference_backend, || Ok(Arc::new(ReferenceBackend)));
