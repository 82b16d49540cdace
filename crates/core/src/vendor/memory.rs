//! Checks shared by every backend's copies into and out of existing memory
//! ([`crate::Backend::upload_into`], [`crate::Backend::copy_into`],
//! [`crate::Backend::download_into`]), so all of them reject a bad range identically before
//! anything is written; and [`TrafficCounter`], the counts behind [`crate::Backend::traffic`].

use crate::{DType, DeviceTensor, Error, HostTensor, Result, Traffic};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Thread-safe counters of a backend's transfers and allocations: call the `count_*`
/// methods at the one place the backend copies or allocates, and return
/// [`TrafficCounter::get`] from [`crate::Backend::traffic`].
#[derive(Debug, Default)]
pub struct TrafficCounter {
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    downloads: AtomicU64,
    download_bytes: AtomicU64,
    allocations: AtomicU64,
    allocation_bytes: AtomicU64,
}

/// Adds one event of `bytes` bytes to a count and its byte total.
fn add(count: &AtomicU64, total: &AtomicU64, bytes: usize) {
    count.fetch_add(1, Ordering::Relaxed);
    total.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl TrafficCounter {
    /// One host-to-device copy of `bytes` bytes.
    pub fn count_upload(&self, bytes: usize) {
        add(&self.uploads, &self.upload_bytes, bytes);
    }

    /// One device-to-host copy of `bytes` bytes.
    pub fn count_download(&self, bytes: usize) {
        add(&self.downloads, &self.download_bytes, bytes);
    }

    /// One device allocation of `bytes` bytes.
    pub fn count_allocation(&self, bytes: usize) {
        add(&self.allocations, &self.allocation_bytes, bytes);
    }

    /// The counts so far.
    pub fn get(&self) -> Traffic {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Traffic {
            uploads: load(&self.uploads),
            upload_bytes: load(&self.upload_bytes),
            downloads: load(&self.downloads),
            download_bytes: load(&self.download_bytes),
            allocations: load(&self.allocations),
            allocation_bytes: load(&self.allocation_bytes),
        }
    }
}

/// The byte range of elements `[offset, offset + len)` of `t`: [`Error::OutOfBounds`] when
/// it does not lie within the tensor (checked arithmetic, never a wrapped range).
pub fn byte_range(
    call: &'static str,
    arg: &'static str,
    t: &DeviceTensor,
    offset: usize,
    len: usize,
) -> Result<Range<usize>> {
    let size = t.shape().checked_elem_count().ok_or_else(|| Error::Size {
        shape: t.shape().clone(),
        dtype: t.dtype(),
    })?;
    let out_of_bounds = || Error::OutOfBounds {
        call,
        arg,
        offset,
        len,
        size,
    };
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= size)
        .ok_or_else(out_of_bounds)?;
    let width = t.dtype().size_in_bytes();
    // `end <= size` and the tensor's byte count fits (`Shape::byte_len`), so neither
    // product overflows.
    t.shape().byte_len(t.dtype())?;
    Ok(offset * width..end * width)
}

/// `got` (the dtype of `arg`) must equal `expected` (that of `other`):
/// [`Error::DTypeMismatch`] otherwise.
pub fn same_dtype(
    call: &'static str,
    arg: &'static str,
    got: DType,
    other: &'static str,
    expected: DType,
) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(Error::DTypeMismatch {
        call,
        arg,
        other,
        expected,
        got,
    })
}

/// The checks of [`crate::Backend::upload_into`]: `dst` must have `src`'s dtype
/// ([`same_dtype`]) and `src`'s elements must fit `dst` from `dst_offset` ([`byte_range`]).
/// Returns the byte range of `dst` to write.
pub fn upload_range(
    src: &HostTensor,
    dst: &DeviceTensor,
    dst_offset: usize,
) -> Result<Range<usize>> {
    const CALL: &str = "upload_into";
    same_dtype(CALL, "dst", dst.dtype(), "src", src.dtype())?;
    byte_range(CALL, "dst", dst, dst_offset, src.elem_count())
}

/// The checks of [`crate::Backend::copy_into`]: `dst` must have `src`'s dtype and both
/// ranges of `len` elements must lie within their tensors (`src`'s checked first).
/// Returns the byte ranges of `src` and `dst`, of equal length.
pub fn copy_ranges(
    src: &DeviceTensor,
    src_offset: usize,
    dst: &DeviceTensor,
    dst_offset: usize,
    len: usize,
) -> Result<(Range<usize>, Range<usize>)> {
    const CALL: &str = "copy_into";
    same_dtype(CALL, "dst", dst.dtype(), "src", src.dtype())?;
    Ok((
        byte_range(CALL, "src", src, src_offset, len)?,
        byte_range(CALL, "dst", dst, dst_offset, len)?,
    ))
}

/// The checks of [`crate::Backend::download_into`]: `dst` must have `src`'s dtype and
/// `dst.elem_count()` elements from `src_offset` must lie within `src`. Returns the byte
/// range of `src` to read.
pub fn download_range(
    src: &DeviceTensor,
    src_offset: usize,
    dst: &HostTensor,
) -> Result<Range<usize>> {
    const CALL: &str = "download_into";
    same_dtype(CALL, "dst", dst.dtype(), "src", src.dtype())?;
    byte_range(CALL, "src", src, src_offset, dst.elem_count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceBuffer, Shape};
    use std::any::Any;
    use std::sync::Arc;

    #[derive(Debug)]
    struct NoMemory;
    impl DeviceBuffer for NoMemory {
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn tensor(dims: &[usize], dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(NoMemory), "test".into(), Shape::from(dims), dtype)
    }

    #[test]
    fn ranges_are_in_elements_and_checked() {
        let t = tensor(&[2, 3], DType::F32);
        assert_eq!(byte_range("copy_into", "dst", &t, 0, 6).unwrap(), 0..24);
        assert_eq!(byte_range("copy_into", "dst", &t, 4, 2).unwrap(), 16..24);
        assert_eq!(byte_range("copy_into", "dst", &t, 6, 0).unwrap(), 24..24);
        for (offset, len) in [(5, 2), (7, 0), (usize::MAX, 2), (1, usize::MAX)] {
            let err = byte_range("copy_into", "dst", &t, offset, len).unwrap_err();
            assert_eq!(
                err,
                Error::OutOfBounds {
                    call: "copy_into",
                    arg: "dst",
                    offset,
                    len,
                    size: 6
                }
            );
        }
        let huge = tensor(&[usize::MAX, 2], DType::U8);
        assert!(matches!(
            byte_range("copy_into", "src", &huge, 0, 1),
            Err(Error::Size { .. })
        ));
    }

    #[test]
    fn traffic_counts_events_and_bytes_and_subtracts() {
        let c = TrafficCounter::default();
        c.count_upload(10);
        c.count_upload(6);
        c.count_download(4);
        let before = c.get();
        c.count_allocation(64);
        c.count_download(8);
        let now = c.get();
        assert_eq!(
            before,
            Traffic {
                uploads: 2,
                upload_bytes: 16,
                downloads: 1,
                download_bytes: 4,
                ..Traffic::default()
            }
        );
        assert_eq!(
            now.since(&before),
            Traffic {
                downloads: 1,
                download_bytes: 8,
                allocations: 1,
                allocation_bytes: 64,
                ..Traffic::default()
            }
        );
        assert_eq!(
            now.since(&before).to_string(),
            "0 uploads (0 B), 1 downloads (8 B), 1 allocations (64 B)"
        );
    }

    #[test]
    fn entry_point_checks_order_dtype_then_ranges() {
        let dev = tensor(&[4], DType::F32);
        let host = HostTensor::zeros([2], DType::F32).unwrap();
        assert_eq!(upload_range(&host, &dev, 2).unwrap(), 8..16);
        assert_eq!(download_range(&dev, 1, &host).unwrap(), 4..12);
        let small = tensor(&[3], DType::F32);
        assert_eq!(copy_ranges(&dev, 1, &small, 0, 3).unwrap(), (4..16, 0..12));
        let oob = |call, arg, offset, len, size| Error::OutOfBounds {
            call,
            arg,
            offset,
            len,
            size,
        };
        assert_eq!(
            upload_range(&host, &dev, 3),
            Err(oob("upload_into", "dst", 3, 2, 4))
        );
        assert_eq!(
            download_range(&dev, 3, &host),
            Err(oob("download_into", "src", 3, 2, 4))
        );
        // Both ranges bad: `src`'s is reported.
        assert_eq!(
            copy_ranges(&dev, 2, &small, 2, 3),
            Err(oob("copy_into", "src", 2, 3, 4))
        );
        assert_eq!(
            copy_ranges(&dev, 0, &small, 1, 3),
            Err(oob("copy_into", "dst", 1, 3, 3))
        );
        // A dtype mismatch comes before a bad range.
        let bf16 = HostTensor::zeros([8], DType::BF16).unwrap();
        let mismatch = |call, got, expected| Error::DTypeMismatch {
            call,
            arg: "dst",
            other: "src",
            expected,
            got,
        };
        assert_eq!(
            upload_range(&bf16, &dev, 9),
            Err(mismatch("upload_into", DType::F32, DType::BF16))
        );
        assert_eq!(
            download_range(&dev, 9, &bf16),
            Err(mismatch("download_into", DType::BF16, DType::F32))
        );
        let u8s = tensor(&[1], DType::U8);
        assert_eq!(
            copy_ranges(&dev, 9, &u8s, 9, 1),
            Err(mismatch("copy_into", DType::U8, DType::F32))
        );
    }

    #[test]
    fn dtypes_must_agree() {
        assert!(same_dtype("upload_into", "dst", DType::BF16, "src", DType::BF16).is_ok());
        let err = same_dtype("upload_into", "dst", DType::F16, "src", DType::BF16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "upload_into: `dst` must be BF16 (the dtype of `src`), got F16"
        );
    }
}
