//! The CPU backend's tensor storage: a typed host vector per tensor, or a caller's host
//! memory borrowed for the tensor's life ([`CpuBuffer`]). Ops see either as typed slices
//! ([`CpuSlice`], [`CpuSliceMut`]).

use half::{bf16, f16};
use moemla_core::{DType, DeviceBuffer, DeviceTensor, Element, Error, HostTensor, Result, Shape};
use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One tensor's elements in host memory the backend owns, typed by its dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuStorage {
    /// IEEE binary32 elements.
    F32(Vec<f32>),
    /// IEEE binary16 elements.
    F16(Vec<f16>),
    /// bfloat16 elements.
    BF16(Vec<bf16>),
    /// Signed 32-bit integers (ids, block tables, sequence lengths).
    I32(Vec<i32>),
    /// FP8 e4m3fn bit patterns (FP8 expert weights).
    F8E4M3(Vec<u8>),
    /// Bytes (the 656-byte FP8 latent cache rows).
    U8(Vec<u8>),
}

/// A tensor's elements, borrowed for reading: what every CPU op matches on, whoever owns
/// the memory (the backend or the caller).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuSlice<'a> {
    /// IEEE binary32 elements.
    F32(&'a [f32]),
    /// IEEE binary16 elements.
    F16(&'a [f16]),
    /// bfloat16 elements.
    BF16(&'a [bf16]),
    /// Signed 32-bit integers.
    I32(&'a [i32]),
    /// FP8 e4m3fn bit patterns.
    F8E4M3(&'a [u8]),
    /// Bytes.
    U8(&'a [u8]),
}

/// A tensor's elements, borrowed for writing in place (never resized).
#[derive(Debug)]
pub enum CpuSliceMut<'a> {
    /// IEEE binary32 elements.
    F32(&'a mut [f32]),
    /// IEEE binary16 elements.
    F16(&'a mut [f16]),
    /// bfloat16 elements.
    BF16(&'a mut [bf16]),
    /// Signed 32-bit integers.
    I32(&'a mut [i32]),
    /// FP8 e4m3fn bit patterns.
    F8E4M3(&'a mut [u8]),
    /// Bytes.
    U8(&'a mut [u8]),
}

impl DeviceBuffer for CpuStorage {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CpuStorage {
    /// A zero-filled `dtype` tensor of `shape`: an unrepresentable size is
    /// [`Error::Size`], a refused allocation [`Error::OutOfMemory`] (never an abort).
    pub fn zeros(dtype: DType, shape: &Shape) -> Result<Self> {
        let len = shape.byte_len(dtype)? / dtype.size_in_bytes();
        const WHAT: &str = "cpu alloc_zeroed";
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(filled_vec(len, WHAT)?),
            DType::F16 => CpuStorage::F16(filled_vec(len, WHAT)?),
            DType::BF16 => CpuStorage::BF16(filled_vec(len, WHAT)?),
            DType::I32 => CpuStorage::I32(filled_vec(len, WHAT)?),
            DType::F8E4M3 => CpuStorage::F8E4M3(filled_vec(len, WHAT)?),
            DType::U8 => CpuStorage::U8(filled_vec(len, WHAT)?),
        })
    }

    /// A copy of a host tensor's elements (fallible allocation).
    pub fn from_host(host: &HostTensor) -> Result<Self> {
        let bytes = host.as_bytes();
        Ok(match host.dtype() {
            DType::F32 => CpuStorage::F32(copy_of(bytes)?),
            DType::F16 => CpuStorage::F16(copy_of(bytes)?),
            DType::BF16 => CpuStorage::BF16(copy_of(bytes)?),
            DType::I32 => CpuStorage::I32(copy_of(bytes)?),
            DType::F8E4M3 => CpuStorage::F8E4M3(copy_of(bytes)?),
            DType::U8 => CpuStorage::U8(copy_of(bytes)?),
        })
    }

    /// The elements, borrowed.
    pub fn as_slice(&self) -> CpuSlice<'_> {
        match self {
            CpuStorage::F32(v) => CpuSlice::F32(v),
            CpuStorage::F16(v) => CpuSlice::F16(v),
            CpuStorage::BF16(v) => CpuSlice::BF16(v),
            CpuStorage::I32(v) => CpuSlice::I32(v),
            CpuStorage::F8E4M3(v) => CpuSlice::F8E4M3(v),
            CpuStorage::U8(v) => CpuSlice::U8(v),
        }
    }

    /// The elements, borrowed for writing in place.
    pub fn as_mut_slice(&mut self) -> CpuSliceMut<'_> {
        match self {
            CpuStorage::F32(v) => CpuSliceMut::F32(v),
            CpuStorage::F16(v) => CpuSliceMut::F16(v),
            CpuStorage::BF16(v) => CpuSliceMut::BF16(v),
            CpuStorage::I32(v) => CpuSliceMut::I32(v),
            CpuStorage::F8E4M3(v) => CpuSliceMut::F8E4M3(v),
            CpuStorage::U8(v) => CpuSliceMut::U8(v),
        }
    }

    /// The elements as little-endian bytes (fallible allocation).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.as_slice().to_bytes()
    }

    /// The elements as little-endian bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        self.as_slice().as_bytes()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }
}

impl<'a> CpuSlice<'a> {
    /// The elements as little-endian bytes.
    pub fn as_bytes(self) -> &'a [u8] {
        match self {
            CpuSlice::F32(v) => bytemuck::cast_slice(v),
            CpuSlice::F16(v) => bytemuck::cast_slice(v),
            CpuSlice::BF16(v) => bytemuck::cast_slice(v),
            CpuSlice::I32(v) => bytemuck::cast_slice(v),
            CpuSlice::F8E4M3(v) | CpuSlice::U8(v) => v,
        }
    }

    /// A copy of the elements as little-endian bytes (fallible allocation).
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        copy_of(self.as_bytes())
    }

    /// Number of elements.
    pub fn len(self) -> usize {
        self.as_bytes().len() / self.dtype().size_in_bytes()
    }

    /// Whether there are no elements.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The dtype of the elements.
    pub fn dtype(self) -> DType {
        match self {
            CpuSlice::F32(_) => DType::F32,
            CpuSlice::F16(_) => DType::F16,
            CpuSlice::BF16(_) => DType::BF16,
            CpuSlice::I32(_) => DType::I32,
            CpuSlice::F8E4M3(_) => DType::F8E4M3,
            CpuSlice::U8(_) => DType::U8,
        }
    }
}

impl<'a> CpuSliceMut<'a> {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuSliceMut::F32(_) => DType::F32,
            CpuSliceMut::F16(_) => DType::F16,
            CpuSliceMut::BF16(_) => DType::BF16,
            CpuSliceMut::I32(_) => DType::I32,
            CpuSliceMut::F8E4M3(_) => DType::F8E4M3,
            CpuSliceMut::U8(_) => DType::U8,
        }
    }

    /// The elements as little-endian bytes, for writing.
    pub fn into_bytes(self) -> &'a mut [u8] {
        match self {
            CpuSliceMut::F32(v) => bytemuck::cast_slice_mut(v),
            CpuSliceMut::F16(v) => bytemuck::cast_slice_mut(v),
            CpuSliceMut::BF16(v) => bytemuck::cast_slice_mut(v),
            CpuSliceMut::I32(v) => bytemuck::cast_slice_mut(v),
            CpuSliceMut::F8E4M3(v) | CpuSliceMut::U8(v) => v,
        }
    }
}

/// Orders every access to [`CpuBuffer`] memory: calls that read tensors hold it shared
/// ([`reading`]), calls that write into existing tensors hold it exclusively ([`writing`]),
/// so a write never races a read in safe code.
static ACCESS: RwLock<()> = RwLock::new(());

/// Shared access to CPU tensor memory, for a call that reads tensors (ops, downloads).
/// Not reentrant: a call takes it once.
pub fn reading() -> RwLockReadGuard<'static, ()> {
    ACCESS.read().unwrap_or_else(|e| e.into_inner())
}

/// Exclusive access to CPU tensor memory, for a call that writes into existing tensors.
pub fn writing() -> RwLockWriteGuard<'static, ()> {
    ACCESS.write().unwrap_or_else(|e| e.into_inner())
}

/// Where a [`CpuBuffer`]'s elements live.
enum Memory {
    /// A vector the buffer owns and frees.
    Owned(CpuStorage),
    /// `len` `dtype` elements of the caller's memory at `ptr` (non-null, aligned for
    /// `dtype`), borrowed under [`moemla_core::DeviceTensor::from_raw`]'s contract; never
    /// freed, resized or turned into an owning type here.
    Borrowed {
        ptr: NonNull<u8>,
        len: usize,
        dtype: DType,
    },
}

/// The memory of every tensor the CPU backend makes: its own elements, or (from
/// [`moemla_core::DeviceTensor::from_raw`]) a caller's host memory it borrows and never
/// frees. Read as a [`CpuSlice`]; writable in place ([`CpuBuffer::slice_mut`]) under
/// `writing()` (the backend's write lock).
pub struct CpuBuffer {
    /// The elements (mutated only through [`CpuBuffer::slice_mut`]).
    data: UnsafeCell<Memory>,
}

// SAFETY: `data` is read only under `reading` (or by the call that made the buffer) and
// written only under `writing`; the caller's memory of a borrowed buffer is shared with
// other threads only as `DeviceTensor::from_raw`'s contract allows.
unsafe impl Sync for CpuBuffer {}
// SAFETY: the elements are plain data; a borrowed buffer's memory is valid from any thread
// (`from_raw`'s contract).
unsafe impl Send for CpuBuffer {}

impl CpuBuffer {
    /// Storage the buffer owns.
    pub fn owned(storage: CpuStorage) -> Self {
        CpuBuffer {
            data: UnsafeCell::new(Memory::Owned(storage)),
        }
    }

    /// `bytes` bytes of caller memory at `ptr`, as `dtype` elements; borrowed, never freed.
    /// A null or misaligned `ptr`, or a size that is not whole elements, is
    /// [`Error::Tensor`].
    ///
    /// # Safety
    ///
    /// The contract of [`moemla_core::DeviceTensor::from_raw`]: `ptr` points to `bytes`
    /// initialized, readable and writable bytes that stay valid while the buffer lives, and
    /// nothing else writes them (or reads them during a write) while a call uses them.
    pub unsafe fn wrap(ptr: *mut std::ffi::c_void, bytes: usize, dtype: DType) -> Result<Self> {
        let width = dtype.size_in_bytes();
        let aligned = (ptr as usize).is_multiple_of(width);
        match NonNull::new(ptr.cast::<u8>()) {
            Some(ptr) if aligned && bytes.is_multiple_of(width) && bytes <= isize::MAX as usize => {
                Ok(CpuBuffer {
                    data: UnsafeCell::new(Memory::Borrowed {
                        ptr,
                        len: bytes / width,
                        dtype,
                    }),
                })
            }
            _ => Err(Error::Tensor(format!(
                "cpu wrap_raw: {ptr:p} ({bytes} bytes) is not a non-null {dtype} array aligned \
                 to {width} bytes"
            ))),
        }
    }

    /// The elements, for reading.
    pub fn slice(&self) -> CpuSlice<'_> {
        // SAFETY: writes happen only through `slice_mut` under `writing`, which excludes
        // every reader holding `reading`; see `ACCESS`.
        match unsafe { &*self.data.get() } {
            Memory::Owned(s) => s.as_slice(),
            &Memory::Borrowed { ptr, len, dtype } => {
                // SAFETY: `wrap` checked `ptr` non-null and aligned for `dtype`; the caller's
                // contract (`from_raw`) makes `len` initialized elements (every bit pattern
                // is a valid value of these plain types) valid for the buffer's life, and
                // nothing writes them while this shared borrow of `self` is used.
                unsafe {
                    match dtype {
                        DType::F32 => CpuSlice::F32(borrow(ptr, len)),
                        DType::F16 => CpuSlice::F16(borrow(ptr, len)),
                        DType::BF16 => CpuSlice::BF16(borrow(ptr, len)),
                        DType::I32 => CpuSlice::I32(borrow(ptr, len)),
                        DType::F8E4M3 => CpuSlice::F8E4M3(borrow(ptr, len)),
                        DType::U8 => CpuSlice::U8(borrow(ptr, len)),
                    }
                }
            }
        }
    }

    /// The elements, for writing in place (never resized).
    ///
    /// # Safety
    ///
    /// The caller holds `writing()` and no other reference into this buffer is live.
    #[allow(clippy::mut_from_ref)] // interior mutability through `UnsafeCell`, under `writing`
    pub unsafe fn slice_mut(&self) -> CpuSliceMut<'_> {
        // SAFETY: exclusive access per this function's contract.
        match unsafe { &mut *self.data.get() } {
            Memory::Owned(s) => s.as_mut_slice(),
            &mut Memory::Borrowed { ptr, len, dtype } => {
                // SAFETY: as in `slice`, and exclusive per this function's contract (the
                // caller's memory overlaps no other tensor a call uses: `from_raw`).
                unsafe {
                    match dtype {
                        DType::F32 => CpuSliceMut::F32(borrow_mut(ptr, len)),
                        DType::F16 => CpuSliceMut::F16(borrow_mut(ptr, len)),
                        DType::BF16 => CpuSliceMut::BF16(borrow_mut(ptr, len)),
                        DType::I32 => CpuSliceMut::I32(borrow_mut(ptr, len)),
                        DType::F8E4M3 => CpuSliceMut::F8E4M3(borrow_mut(ptr, len)),
                        DType::U8 => CpuSliceMut::U8(borrow_mut(ptr, len)),
                    }
                }
            }
        }
    }

    /// The elements as bytes, for writing in place (never resized).
    ///
    /// # Safety
    ///
    /// As [`CpuBuffer::slice_mut`].
    #[allow(clippy::mut_from_ref)] // interior mutability through `UnsafeCell`, under `writing`
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: this function's contract is `slice_mut`'s.
        unsafe { self.slice_mut() }.into_bytes()
    }

    /// Whether the memory is the caller's (wrapped by `from_raw`), not the backend's.
    pub fn is_borrowed(&self) -> bool {
        // SAFETY: reads the variant only, not the elements.
        matches!(unsafe { &*self.data.get() }, Memory::Borrowed { .. })
    }

    /// Address of the first element (tests compare it to tell that a buffer was reused).
    pub fn addr(&self) -> usize {
        self.slice().as_bytes().as_ptr() as usize
    }
}

/// `len` `T`s at `ptr`, borrowed for reading.
///
/// # Safety
///
/// `ptr` is aligned for `T` and points to `len` initialized `T`s that no one writes while
/// the result lives.
unsafe fn borrow<'a, T: bytemuck::Pod>(ptr: NonNull<u8>, len: usize) -> &'a [T] {
    // SAFETY: this function's contract.
    unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<T>(), len) }
}

/// `len` `T`s at `ptr`, borrowed for writing.
///
/// # Safety
///
/// As [`borrow`], and no one else reads or writes them while the result lives.
unsafe fn borrow_mut<'a, T: bytemuck::Pod>(ptr: NonNull<u8>, len: usize) -> &'a mut [T] {
    // SAFETY: this function's contract.
    unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<T>(), len) }
}

impl fmt::Debug for CpuBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = if self.is_borrowed() {
            "caller's"
        } else {
            "owned"
        };
        write!(f, "CpuBuffer({owner} memory at {:#x})", self.addr())
    }
}

impl DeviceBuffer for CpuBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The writable buffer of `t` (a CPU tensor the backend made), its dtype and element count
/// checked as [`storage`] does.
pub fn buffer<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a CpuBuffer> {
    storage(t, backend, call, arg)?;
    t.buffer::<CpuBuffer>(backend, call, arg)
}

/// `bytes` (a whole number of `T`s, as a host tensor holds them) copied into a new `Vec<T>`,
/// allocated fallibly.
fn copy_of<T: bytemuck::Pod + Default>(bytes: &[u8]) -> Result<Vec<T>> {
    let mut v: Vec<T> = filled_vec(bytes.len() / std::mem::size_of::<T>(), "cpu upload")?;
    bytemuck::cast_slice_mut(&mut v).copy_from_slice(bytes);
    Ok(v)
}

/// The element range of rows `first..first + rows` of a row-major matrix with `cols`
/// columns, or `None` where its end overflows (checked arithmetic; the caller checks it
/// against its slice).
pub fn row_range(first: usize, rows: usize, cols: usize) -> Option<std::ops::Range<usize>> {
    let end = first.checked_add(rows)?.checked_mul(cols)?;
    Some(first * cols..end)
}

/// A zero-filled buffer for `dims` elements of `T` (an output or a scratch buffer whose size
/// no input tensor bounds): the count is multiplied out with checked arithmetic
/// ([`Error::Size`] when it does not fit) and the allocation is fallible
/// ([`Error::OutOfMemory`]); `what` names the buffer in the error.
pub fn zeroed<T: Element + Default>(dims: &[usize], what: &str) -> Result<Vec<T>> {
    let bytes = Shape::from(dims).byte_len(T::DTYPE)?;
    filled_vec(bytes / T::DTYPE.size_in_bytes(), what)
}

/// Allocations of at least this many bytes ask for transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// `len` default (zero) `T`s, allocated fallibly ([`Error::OutOfMemory`], `what` naming the
/// buffer); an allocation of [`HUGE_PAGE_MIN_BYTES`] or more is advised to use transparent
/// huge pages ([`advise_huge_pages`]) before the fill first touches its pages, so weights
/// and large scratch buffers stream with far fewer TLB misses and page faults.
fn filled_vec<T: Clone + Default>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        what: what.to_string(),
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    advise_large(v.as_mut_ptr().cast::<u8>(), bytes);
    v.resize(len, T::default());
    Ok(v)
}

/// Advises huge pages ([`advise_huge_pages`]) for an allocation of `bytes` bytes at `ptr`
/// that this process made, not yet touched, if it is [`HUGE_PAGE_MIN_BYTES`] or more.
pub(crate) fn advise_large(ptr: *mut u8, bytes: usize) {
    if bytes >= HUGE_PAGE_MIN_BYTES {
        advise_huge_pages(ptr, bytes);
    }
}

/// Asks the kernel to back the whole pages inside `bytes` bytes at `ptr` (memory this
/// process allocated) with transparent huge pages (`MADV_HUGEPAGE`).
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const PAGE: usize = 4096;
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize).saturating_add(bytes) / PAGE * PAGE;
    if end > start {
        // SAFETY: `start .. end` lies inside the allocation at `ptr` (rounded inward to
        // whole pages) and is page-aligned as madvise requires; MADV_HUGEPAGE only changes
        // how the kernel backs those pages, never their contents or validity. A failure is
        // ignored on purpose: it is advice (no THP support, THP `never`), and the memory is
        // then simply backed by 4 KiB pages.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// Elsewhere huge pages are not asked for.
#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _bytes: usize) {}

/// A float tensor's elements, borrowed in their storage type.
#[derive(Clone, Copy, Debug)]
pub enum FloatSlice<'a> {
    /// F32 elements.
    F32(&'a [f32]),
    /// F16 elements.
    F16(&'a [f16]),
    /// BF16 elements.
    BF16(&'a [bf16]),
}

/// The CPU storage of `t`, checking it belongs to backend `backend` and holds exactly the
/// tensor's dtype and element count (so no op can index past it). The caller holds
/// [`reading`] (or made the tensor itself) while it uses the result.
pub fn storage<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<CpuSlice<'a>> {
    let s = match t.buffer::<CpuBuffer>(backend, call, arg) {
        Ok(b) => b.slice(),
        Err(_) => match t.buffer::<CpuStorage>(backend, call, arg) {
            Ok(s) => s.as_slice(),
            Err(_) if crate::panels::PanelWeights::holds(t) && t.backend() == backend => {
                return Err(Error::Device {
                    backend: backend.to_string(),
                    call: format!("{call}: `{arg}`"),
                    message: format!(
                        "{t:?} holds expert weights laid out by pack_expert_weights, which \
                         only moe_experts (as the weight they were packed as) and the \
                         downloads read"
                    ),
                });
            }
            Err(e) => return Err(e),
        },
    };
    if s.dtype() != t.dtype() || t.shape().checked_elem_count() != Some(s.len()) {
        return Err(Error::Device {
            backend: backend.to_string(),
            call: format!("{call}: `{arg}`"),
            message: format!(
                "buffer holds {} {} elements, the tensor is {:?}",
                s.len(),
                s.dtype(),
                t
            ),
        });
    }
    Ok(s)
}

/// Checks each `(arg, tensor)` as [`storage`] does (an op's inputs, before it allocates
/// its outputs, so a malformed input is reported as such rather than as the size of an
/// output it implies).
pub fn check_inputs(
    backend: &str,
    call: &'static str,
    inputs: &[(&'static str, Option<&DeviceTensor>)],
) -> Result<()> {
    for &(arg, t) in inputs {
        if let Some(t) = t {
            storage(t, backend, call, arg)?;
        }
    }
    Ok(())
}

/// The float elements of `t` (F32 | F16 | BF16; validation guarantees the dtype).
pub fn float_slice<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<FloatSlice<'a>> {
    match storage(t, backend, call, arg)? {
        CpuSlice::F32(v) => Ok(FloatSlice::F32(v)),
        CpuSlice::F16(v) => Ok(FloatSlice::F16(v)),
        CpuSlice::BF16(v) => Ok(FloatSlice::BF16(v)),
        other => Err(mismatch(backend, call, arg, other.dtype(), "F32|F16|BF16")),
    }
}

/// A float output's elements, borrowed for writing in their storage type.
#[derive(Debug)]
pub enum FloatSliceMut<'a> {
    /// F32 elements.
    F32(&'a mut [f32]),
    /// F16 elements.
    F16(&'a mut [f16]),
    /// BF16 elements.
    BF16(&'a mut [bf16]),
}

impl FloatSliceMut<'_> {
    /// Sets every element to `value` (rounded to the storage type).
    pub fn fill(&mut self, value: f32) {
        match self {
            FloatSliceMut::F32(v) => v.fill(value),
            FloatSliceMut::F16(v) => v.fill(f16::from_f32(value)),
            FloatSliceMut::BF16(v) => v.fill(bf16::from_f32(value)),
        }
    }
}

/// The elements of `s` as a float output (`arg` of `call`), or the mismatch error.
pub fn float_mut<'a>(
    s: CpuSliceMut<'a>,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<FloatSliceMut<'a>> {
    match s {
        CpuSliceMut::F32(v) => Ok(FloatSliceMut::F32(v)),
        CpuSliceMut::F16(v) => Ok(FloatSliceMut::F16(v)),
        CpuSliceMut::BF16(v) => Ok(FloatSliceMut::BF16(v)),
        other => Err(mismatch(backend, call, arg, other.dtype(), "F32|F16|BF16")),
    }
}

/// The elements of `s` as an F32 output, or the mismatch error.
pub fn f32_mut<'a>(
    s: CpuSliceMut<'a>,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a mut [f32]> {
    match s {
        CpuSliceMut::F32(v) => Ok(v),
        other => Err(mismatch(backend, call, arg, other.dtype(), "F32")),
    }
}

/// The elements of `s` as an I32 output, or the mismatch error.
pub fn i32_mut<'a>(
    s: CpuSliceMut<'a>,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a mut [i32]> {
    match s {
        CpuSliceMut::I32(v) => Ok(v),
        other => Err(mismatch(backend, call, arg, other.dtype(), "I32")),
    }
}

/// The F32 elements of `t`.
pub fn f32_slice<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a [f32]> {
    match storage(t, backend, call, arg)? {
        CpuSlice::F32(v) => Ok(v),
        other => Err(mismatch(backend, call, arg, other.dtype(), "F32")),
    }
}

/// The I32 elements of `t`.
pub fn i32_slice<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a [i32]> {
    match storage(t, backend, call, arg)? {
        CpuSlice::I32(v) => Ok(v),
        other => Err(mismatch(backend, call, arg, other.dtype(), "I32")),
    }
}

/// A buffer whose stored type disagrees with what validation promised: a backend bug or a
/// tensor built by hand with a mislabelled buffer.
fn mismatch(backend: &str, call: &'static str, arg: &'static str, got: DType, want: &str) -> Error {
    Error::Device {
        backend: backend.to_string(),
        call: format!("{call}: `{arg}`"),
        message: format!("buffer holds {got}, expected {want}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_row_range_is_its_elements_or_none_where_its_end_overflows() {
        assert_eq!(super::row_range(2, 3, 4), Some(8..20));
        assert_eq!(super::row_range(5, 0, 7), Some(35..35));
        assert_eq!(super::row_range(usize::MAX, 1, 1), None);
        assert_eq!(super::row_range(1 << 40, 1, 1 << 30), None);
    }

    use super::*;
    use crate::CpuBackend;
    use moemla_core::{ops, Backend, ExpertsParams, MlaDecodeParams, RouteParams};
    use std::sync::Arc;

    #[test]
    fn alloc_zeroed_of_an_impossible_size_is_an_error_not_an_abort() {
        let cpu = CpuBackend::new();
        // 1 TiB: representable, but no allocator here grants it.
        let err = cpu.alloc_zeroed(&[1 << 38].into(), DType::F32).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        // 2^64 elements wrap to 0 in unchecked arithmetic.
        for (dims, dtype) in [
            (vec![1usize << 62, 4], DType::F32),
            (vec![usize::MAX, 2], DType::I32),
            (vec![1usize << 63], DType::BF16),
        ] {
            let err = cpu.alloc_zeroed(&dims.clone().into(), dtype).unwrap_err();
            assert!(matches!(err, Error::Size { .. }), "{dims:?} {dtype}: {err}");
        }
        let ok = cpu.alloc_zeroed(&[2, 3].into(), DType::BF16).unwrap();
        assert_eq!(
            cpu.download(&ok).unwrap().to_f32_vec().unwrap(),
            vec![0.0; 6]
        );
    }

    /// A tensor built by hand whose shape claims 2^64 elements over an empty buffer (what
    /// `HostTensor::from_bytes` accepted before sizes were checked).
    fn unrepresentable(dims: &[usize], storage: CpuStorage) -> DeviceTensor {
        let dtype = storage.dtype();
        DeviceTensor::new(Arc::new(storage), crate::NAME.into(), dims, dtype)
    }

    #[test]
    fn tensors_whose_shape_disagrees_with_their_buffer_are_rejected_by_every_call() {
        let cpu = CpuBackend::new();
        let huge = 1usize << 62;
        let logits = unrepresentable(&[huge, 4], CpuStorage::F32(vec![]));
        assert!(matches!(cpu.download(&logits), Err(Error::Device { .. })));
        let p = RouteParams {
            top_k: 2,
            ..RouteParams::deepseek_v2_lite()
        };
        let err = ops::moe_route(&cpu, &logits, None, &p).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");

        let up = |dims: &[usize]| cpu.alloc_zeroed(&dims.into(), DType::F32).unwrap();
        let x = unrepresentable(&[huge, 4], CpuStorage::F32(vec![]));
        let ids = unrepresentable(&[huge, 1], CpuStorage::I32(vec![]));
        let w = unrepresentable(&[huge, 1], CpuStorage::F32(vec![]));
        let (w13, w2) = (up(&[1, 2, 4]), up(&[1, 4, 1]));
        let err =
            ops::moe_experts(&cpu, &x, &w13, &w2, &ids, &w, &ExpertsParams::default()).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");

        let q = unrepresentable(&[huge, 1, 1, 4], CpuStorage::F32(vec![]));
        let table = unrepresentable(&[huge, 1], CpuStorage::I32(vec![]));
        let lens = unrepresentable(&[huge], CpuStorage::I32(vec![]));
        let cache = up(&[1, 1, 1, 4]);
        let p = MlaDecodeParams {
            softmax_scale: 0.5,
            causal: false,
            head_dim_v: 2,
            kv_format: Default::default(),
        };
        let err = ops::mla_decode(&cpu, &q, &cache, &table, &lens, &p).unwrap_err();
        assert!(matches!(err, Error::Device { .. }), "{err}");

        // A plain length mismatch (6 elements claimed, 4 held) is caught the same way.
        let short = unrepresentable(&[2, 3], CpuStorage::F32(vec![0.0; 4]));
        assert!(matches!(cpu.download(&short), Err(Error::Device { .. })));
    }

    /// The `VmFlags` of the mapping holding `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn large_allocations_hold_what_is_written_and_ask_for_huge_pages() {
        // 64 MiB: above glibc's largest mmap threshold, so a fresh mapping no other test
        // touched before the advice.
        let len = 16usize << 20;
        let mut s = CpuStorage::zeros(DType::F32, &[len].into()).unwrap();
        assert_eq!((s.len(), s.as_bytes().len()), (len, len * 4));
        let CpuSliceMut::F32(v) = s.as_mut_slice() else {
            panic!("not f32")
        };
        assert!(v.iter().all(|&x| x == 0.0));
        for (i, x) in v.iter_mut().enumerate() {
            *x = (i % 1021) as f32 - 7.5;
        }
        let CpuSlice::F32(r) = s.as_slice() else {
            panic!("not f32")
        };
        assert!(r
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i % 1021) as f32 - 7.5));
        // An upload of a large tensor copies it exactly.
        let words: Vec<i32> = (0..(3 << 20) + 5).map(|i| i * 7 - 3).collect();
        let host = HostTensor::from_slice([words.len()], &words).unwrap();
        let up = CpuStorage::from_host(&host).unwrap();
        assert_eq!(up, CpuStorage::I32(words));
        #[cfg(target_os = "linux")]
        {
            let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .unwrap_or_default();
            if mode.contains("[always]") || mode.contains("[madvise]") {
                // `hg`: the mapping was advised MADV_HUGEPAGE (whether the kernel found
                // huge pages at fault time depends on fragmentation, so is not asserted).
                let flags = vm_flags(r.as_ptr() as usize + len * 2);
                assert!(
                    flags
                        .as_deref()
                        .is_some_and(|f| f.split_whitespace().any(|x| x == "hg")),
                    "VmFlags {flags:?}"
                );
            } else {
                println!("THP mode {:?}: huge pages not checked", mode.trim());
            }
        }
    }

    #[test]
    fn upload_copies_every_dtype_exactly() {
        let host = HostTensor::from_bytes([3], DType::F8E4M3, vec![0x7f, 0x01, 0x80]).unwrap();
        let s = CpuStorage::from_host(&host).unwrap();
        assert_eq!(s, CpuStorage::F8E4M3(vec![0x7f, 0x01, 0x80]));
        assert_eq!(s.to_bytes().unwrap(), host.as_bytes());
        let host = HostTensor::from_slice([2], &[1.5f32, -2.0]).unwrap();
        let s = CpuStorage::from_host(&host).unwrap();
        assert_eq!(s, CpuStorage::F32(vec![1.5, -2.0]));
        assert_eq!(s.to_bytes().unwrap(), host.as_bytes());
    }
}
