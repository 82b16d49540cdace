//! Helpers for the crate's own tests: deterministic pseudo-random data and tensors.

use crate::CpuBackend;
use moemla_core::{Backend, DType, DeviceTensor, HostTensor};

/// A small deterministic generator (64-bit LCG, Knuth's MMIX constants).
pub struct Lcg(u64);

impl Lcg {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `n` bf16 values uniform in [lo, lo + 4) from `seed` (the SIMD kernels' test operands).
pub fn bf16_values(n: usize, seed: u64, lo: f32) -> Vec<half::bf16> {
    Lcg::new(seed)
        .vec(n, lo, lo + 4.0)
        .into_iter()
        .map(half::bf16::from_f32)
        .collect()
}

/// Uploads `values` as a `dtype` tensor (rounded), returning the tensor and the values as
/// stored (so references see exactly the rounded inputs).
pub fn upload_as(
    cpu: &CpuBackend,
    dims: &[usize],
    values: &[f32],
    dtype: DType,
) -> (DeviceTensor, Vec<f32>) {
    let host = HostTensor::from_f32_as(dims, values, dtype).unwrap();
    let stored = host.to_f32_vec().unwrap();
    (cpu.upload(&host).unwrap(), stored)
}

/// Downloads a float tensor as f32.
pub fn download_f32(cpu: &CpuBackend, t: &DeviceTensor) -> Vec<f32> {
    cpu.download(t).unwrap().to_f32_vec().unwrap()
}
