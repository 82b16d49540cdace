//! Programs of the contract-v2 kernels: `common.cl`, then `fp8.cl`, then one kernel file,
//! built with the storage dtype's options plus the variant's defines, once per process per
//! (kernels, dtype), in the device's context (cached in its `Programs`).

use crate::device::ClDevice;
use crate::program::build_source;
use moemla_core::{DType, Result};
use opencl3::program::Program;
use std::sync::Arc;

const COMMON_SRC: &str = include_str!("../../../kernels/opencl/common.cl");
const FP8_SRC: &str = include_str!("../../../kernels/opencl/fp8.cl");

/// A v2 program: a kernel file and the defines it is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// `moe_route_hash.cl`: hash routing.
    MoeRouteHash,
    /// `moe_experts_v2.cl`: FP8 block-scaled weights, activation quantization, SwiGLU clamp.
    MoeExpertsV2,
    /// `mla_decode.cl` over `fp8_ds_v32` rows (`-DKV_FP8`).
    MlaDecodeFp8,
    /// `mla_kv_quantize.cl`.
    MlaKvQuantize,
    /// `mla_sparse_decode.cl`, over `fp8_ds_v32` rows when `fp8` (`-DKV_FP8`).
    MlaSparseDecode {
        /// Whether the cache holds `fp8_ds_v32` rows.
        fp8: bool,
    },
    /// `dsa_indexer_topk.cl`.
    DsaIndexerTopk,
    /// `mla_kv_quantize.cl` then `mla_cache_write.cl` (which writes FP8 rows with the
    /// former's `ds_write_row`).
    MlaCacheWrite,
}

impl Kernels {
    fn source(self) -> &'static str {
        match self {
            Kernels::MoeRouteHash => include_str!("../../../kernels/opencl/moe_route_hash.cl"),
            Kernels::MoeExpertsV2 => include_str!("../../../kernels/opencl/moe_experts_v2.cl"),
            Kernels::MlaDecodeFp8 => include_str!("../../../kernels/opencl/mla_decode.cl"),
            Kernels::MlaKvQuantize => include_str!("../../../kernels/opencl/mla_kv_quantize.cl"),
            Kernels::MlaSparseDecode { .. } => {
                include_str!("../../../kernels/opencl/mla_sparse_decode.cl")
            }
            Kernels::DsaIndexerTopk => {
                include_str!("../../../kernels/opencl/dsa_indexer_topk.cl")
            }
            Kernels::MlaCacheWrite => concat!(
                include_str!("../../../kernels/opencl/mla_kv_quantize.cl"),
                "\n",
                include_str!("../../../kernels/opencl/mla_cache_write.cl")
            ),
        }
    }

    fn defines(self) -> &'static str {
        match self {
            Kernels::MlaDecodeFp8 | Kernels::MlaSparseDecode { fp8: true } => " -DKV_FP8",
            _ => "",
        }
    }
}

/// The program of `kernels` for storage type `dtype` on `dev`, built on first use (cached
/// with the device's other programs, `program.rs`).
pub fn program(dev: &ClDevice, kernels: Kernels, dtype: DType) -> Result<Arc<Program>> {
    dev.programs.get_v2(kernels, dtype, || {
        build(dev, kernels.source(), kernels.defines(), dtype)
    })
}

/// Builds `common.cl`, `fp8.cl` and `source` for `dtype` with `defines`.
fn build(dev: &ClDevice, source: &str, defines: &str, dtype: DType) -> Result<Arc<Program>> {
    let source = format!("{COMMON_SRC}\n{FP8_SRC}\n{source}");
    // Correctly rounded f32 division and sqrt: FP8 scales (amax / 448) and codes must
    // match the contract's IEEE arithmetic bit for bit.
    let options = format!(
        "{} -cl-fp32-correctly-rounded-divide-sqrt{defines}",
        build_options(dtype)
    );
    build_source(
        &dev.context,
        &source,
        &options,
        &format!("v2 {dtype}{defines}"),
    )
}

/// Build options selecting the storage type (those of the v1 programs).
fn build_options(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "-cl-std=CL1.2 -DDTYPE_F16",
        DType::BF16 => "-cl-std=CL1.2 -DDTYPE_BF16",
        _ => "-cl-std=CL1.2 -DDTYPE_F32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Arg;
    use moemla_core::fp8::{e4m3_decode, e4m3_encode, pow2_ceil};

    const TEST_SRC: &str = "
        __kernel void fp8_test(__global const float *in, int n, __global uint *codes,
                               __global float *pow2, __global float *decoded) {
            const int i = get_global_id(0);
            if (i < n) {
                codes[i] = e4m3_encode(in[i]);
                pow2[i] = pow2_ceil(fabs(in[i]));
            }
            if (i < 256) decoded[i] = e4m3_decode((uint)i);
        }";

    fn read_words(dev: &ClDevice, buf: &crate::ClBuffer, n: usize) -> Vec<u32> {
        let mut bytes = vec![0u8; 4 * n];
        dev.read(buf, 0, &mut bytes).unwrap();
        bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }

    /// fp8.cl against moemla_core::fp8 (itself tested exhaustively against the format's
    /// definition): every code decodes to the same bits; every 4099th f32 bit pattern
    /// (all binades, both signs, ties, overflow, NaN) encodes to the same code; pow2_ceil
    /// of their magnitudes agrees.
    #[test]
    fn fp8_cl_matches_the_core_conversions() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let program = build(dev, TEST_SRC, "", DType::F32).unwrap();
        let mut values: Vec<f32> = (0..=u32::MAX / 4099)
            .map(|i| f32::from_bits(i * 4099))
            .collect();
        // Exact ties between neighbouring codes, and the saturation edge.
        for c in 0u8..0x7E {
            let mid = (e4m3_decode(c) + e4m3_decode(c + 1)) / 2.0;
            values.extend([mid, -mid, mid.next_up(), mid.next_down()]);
        }
        values.extend([448.0, 464.0, 464.5, -480.0, f32::INFINITY, f32::NAN, -0.0]);
        let n = values.len();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let input = dev.upload("test", &bytes).unwrap();
        let codes = dev.alloc_zeroed("test", 4 * n).unwrap();
        let pow2 = dev.alloc_zeroed("test", 4 * n).unwrap();
        let decoded = dev.alloc_zeroed("test", 4 * 256).unwrap();
        let args = [
            Arg::Buf(&input),
            Arg::I32(n as i32),
            Arg::Buf(&codes),
            Arg::Buf(&pow2),
            Arg::Buf(&decoded),
        ];
        dev.launch(&program, "fp8_test", &args, &[n.div_ceil(64) * 64], &[64])
            .unwrap();
        for (code, bits) in read_words(dev, &decoded, 256).into_iter().enumerate() {
            let want = e4m3_decode(code as u8);
            if want.is_nan() {
                assert!(f32::from_bits(bits).is_nan(), "{code:#04x}");
            } else {
                assert_eq!(bits, want.to_bits(), "{code:#04x}");
            }
        }
        let got_codes = read_words(dev, &codes, n);
        let got_pow2 = read_words(dev, &pow2, n);
        for (i, &v) in values.iter().enumerate() {
            assert_eq!(got_codes[i], u32::from(e4m3_encode(v)), "e4m3({v:e})");
            let want = pow2_ceil(v.abs());
            if want.is_nan() {
                assert!(f32::from_bits(got_pow2[i]).is_nan(), "pow2_ceil({v:e})");
            } else {
                assert_eq!(got_pow2[i], want.to_bits(), "pow2_ceil({v:e})");
            }
        }
    }
}
