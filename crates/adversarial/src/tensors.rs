//! Tensor construction with unrepresentable and near-overflow shapes: element and byte
//! counts must be checked, never wrapped to a small buffer.

use crate::{describe, ensure};
use moemla_core::{Backend, DType, Error, HostTensor, Shape};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// Dims that are tiny or far beyond any machine (products overflow `usize` or exceed what
/// can be allocated); never in between, so no case allocates gigabytes for real.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..5,
        1 => Just(1usize << 40),
        1 => Just(1usize << 62),
        1 => Just((1usize << 63) + 1),
        1 => Just(usize::MAX),
    ]
}

/// Any dtype, the integer and FP8 ones included.
fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::I32),
        Just(DType::F8E4M3),
    ]
}

/// Bytes beyond this are never allocatable here: such a request must fail.
const IMPOSSIBLE_BYTES: usize = 1 << 40;

/// alloc_zeroed, HostTensor::from_bytes and DeviceTensor::reshape on random shapes.
pub fn property(backend: &dyn Backend, mut runner: TestRunner) -> Result<(), String> {
    let strategy = (
        prop::collection::vec(dim(), 1..=4),
        prop::collection::vec(dim(), 1..=4),
        dtype(),
        0usize..64,
    );
    runner
        .run(&strategy, |(dims, reshape_to, dtype, byte_count)| {
            let shape = Shape::new(dims.clone());
            let bytes = shape.byte_len(dtype);

            match (backend.alloc_zeroed(&shape, dtype), &bytes) {
                (Ok(t), Ok(n)) => {
                    ensure(*n < IMPOSSIBLE_BYTES, || {
                        format!("alloc_zeroed {shape} {dtype} ({n} bytes) claimed to succeed")
                    })?;
                    ensure(t.dims() == dims.as_slice() && t.dtype() == dtype, || {
                        format!("alloc_zeroed returned {t:?}")
                    })?;
                    let host = backend
                        .download(&t)
                        .map_err(|e| TestCaseError::fail(format!("download: {e}")))?;
                    ensure(host.as_bytes().iter().all(|&b| b == 0), || {
                        "alloc_zeroed is not zeroed".into()
                    })?;
                }
                (Ok(t), Err(_)) => {
                    return Err(TestCaseError::fail(format!(
                        "alloc_zeroed accepted the unrepresentable shape {shape}: {t:?}"
                    )))
                }
                (Err(e), Ok(n)) => ensure(*n >= IMPOSSIBLE_BYTES, || {
                    format!("alloc_zeroed {shape} {dtype} ({n} bytes) failed: {e}")
                })?,
                (Err(e), Err(_)) => ensure(matches!(e, Error::Size { .. }), || {
                    format!("alloc_zeroed {shape}: expected Error::Size, got {e:?}")
                })?,
            }

            let from_bytes = HostTensor::from_bytes(dims.clone(), dtype, vec![0; byte_count]);
            let fits = matches!(bytes, Ok(n) if n == byte_count);
            ensure(from_bytes.is_ok() == fits, || {
                format!("from_bytes {shape} {dtype} with {byte_count} bytes: {from_bytes:?}")
            })?;

            let small = backend
                .alloc_zeroed(&Shape::new([2, 3]), dtype)
                .map_err(|e| TestCaseError::fail(format!("alloc_zeroed [2, 3]: {e}")))?;
            let target = Shape::new(reshape_to.clone());
            let reshaped = small.reshape(target.clone());
            ensure(
                reshaped.is_ok() == (target.checked_elem_count() == Some(6)),
                || format!("reshape [2, 3] to {target}: {reshaped:?}"),
            )?;
            Ok(())
        })
        .map_err(describe)
}
