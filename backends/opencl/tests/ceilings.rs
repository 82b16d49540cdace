//! The benchmark ceilings: dense_gemm against a plain f64 product, its shape checks, and
//! copy_bench.

mod common;

use common::{assert_close, backend, float_tensor, read_f32, tolerance};
use moemla_core::{Backend, DType, Error};
use std::time::Duration;

/// c[m, n] = sum_k a[m, k] * b[n, k], in f64.
fn reference(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
        }
    }
    c
}

fn check(m: usize, n: usize, k: usize, dtype: DType) {
    let Some(be) = backend() else { return };
    let (a, a64) = float_tensor(&*be, &[m, k], &common::uniform(11, m * k, -1.0, 1.0), dtype);
    let (b, b64) = float_tensor(&*be, &[n, k], &common::uniform(12, n * k, -1.0, 1.0), dtype);
    let c = be.dense_gemm(&a, &b).unwrap();
    assert_eq!(c.dims(), &[m, n]);
    assert_eq!(c.dtype(), dtype);
    let what = format!("dense_gemm {m}x{n}x{k} {dtype}");
    assert_close(
        &what,
        &read_f32(&*be, &c),
        &reference(&a64, &b64, m, n, k),
        tolerance(dtype),
    );
}

#[test]
fn dense_gemm_f32_odd_sizes() {
    check(67, 45, 129, DType::F32);
}

#[test]
fn dense_gemm_f16_odd_sizes() {
    check(67, 45, 129, DType::F16);
}

#[test]
fn dense_gemm_bf16_odd_sizes() {
    check(67, 45, 129, DType::BF16);
}

#[test]
fn dense_gemm_several_tiles_each_way() {
    // Two and a bit 64-wide tiles in M and N, K not a multiple of the 16-wide k slice.
    check(130, 129, 70, DType::F32);
}

#[test]
fn dense_gemm_with_empty_k_is_zero() {
    let Some(be) = backend() else { return };
    let (a, _) = float_tensor(&*be, &[3, 0], &[], DType::F32);
    let (b, _) = float_tensor(&*be, &[2, 0], &[], DType::F32);
    let c = be.dense_gemm(&a, &b).unwrap();
    assert_eq!(read_f32(&*be, &c), vec![0.0; 6]);
}

#[test]
fn dense_gemm_rejects_mismatched_shapes_and_dtypes() {
    let Some(be) = backend() else { return };
    let (a, _) = float_tensor(&*be, &[2, 3], &[0.5; 6], DType::F32);
    let (b_k4, _) = float_tensor(&*be, &[2, 4], &[0.5; 8], DType::F32);
    let (b_f16, _) = float_tensor(&*be, &[2, 3], &[0.5; 6], DType::F16);
    let (rank3, _) = float_tensor(&*be, &[1, 2, 3], &[0.5; 6], DType::F32);
    for (b, why) in [(&b_k4, "inner dims"), (&b_f16, "dtypes"), (&rank3, "rank")] {
        match be.dense_gemm(&a, b) {
            Err(Error::Device { call, .. }) => assert_eq!(call, "dense_gemm", "{why}"),
            other => panic!("{why}: expected Error::Device, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn dense_gemm_impl_names_the_storage_dtype() {
    let Some(be) = backend() else { return };
    let name = be.dense_gemm_impl(DType::BF16);
    assert!(
        name.starts_with("moemla OpenCL") && name.ends_with("bf16 storage"),
        "{name}"
    );
}

#[test]
fn copy_bench_reports_a_positive_time() {
    let Some(be) = backend() else { return };
    assert!(be.copy_bench(1 << 20, 3).unwrap() > Duration::ZERO);
}
