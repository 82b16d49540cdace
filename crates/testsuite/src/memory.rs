//! Caller-owned host memory: the checks of `Backend::download_into` every backend that
//! provides it must pass, called from each backend crate's own test (the counters, which
//! differ per backend, stay there).

use moemla_core::{Backend, DType, Error, HostTensor};

/// `download_into` reads element ranges of a [2, 5] F32 tensor into one caller tensor of 4
/// elements (its bytes reused, never reallocated); a range past the end (also when offset
/// plus length overflows) is `OutOfBounds` and a dtype other than the source's is
/// `DTypeMismatch`, and neither writes the caller's tensor.
pub fn download_into_reads_ranges_into_the_callers_tensor(be: &dyn Backend) {
    let values: Vec<f32> = (0..10).map(|i| i as f32 * 0.5).collect();
    let t = be
        .upload(&HostTensor::from_slice([2, 5], &values).unwrap())
        .unwrap();
    let mut dst = HostTensor::zeros([4], DType::F32).unwrap();
    let addr = dst.as_bytes().as_ptr();
    be.download_into(&t, 3, &mut dst).unwrap();
    assert_eq!(dst.to_vec::<f32>().unwrap(), vec![1.5, 2.0, 2.5, 3.0]);
    be.download_into(&t, 6, &mut dst).unwrap();
    assert_eq!(dst.to_vec::<f32>().unwrap(), vec![3.0, 3.5, 4.0, 4.5]);
    assert_eq!(
        dst.as_bytes().as_ptr(),
        addr,
        "the caller's bytes are reused"
    );
    for offset in [7, usize::MAX - 1] {
        let err = be.download_into(&t, offset, &mut dst).unwrap_err();
        assert_eq!(
            err,
            Error::OutOfBounds {
                call: "download_into",
                arg: "src",
                offset,
                len: 4,
                size: 10
            }
        );
    }
    assert_eq!(dst.to_vec::<f32>().unwrap(), vec![3.0, 3.5, 4.0, 4.5]);
    let mut wrong = HostTensor::zeros([2], DType::BF16).unwrap();
    let err = be.download_into(&t, 0, &mut wrong).unwrap_err();
    assert_eq!(
        err,
        Error::DTypeMismatch {
            call: "download_into",
            arg: "dst",
            other: "src",
            expected: DType::F32,
            got: DType::BF16
        }
    );
    assert_eq!(wrong.to_f32_vec().unwrap(), vec![0.0, 0.0]);
}
