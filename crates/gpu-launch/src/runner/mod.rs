//! The one generic runner of the CUDA and HIP backends: the `Backend` methods on top of a
//! [`GpuDevice`], with the ops' argument lists written once (one file per op).
//!
//! Every op plans with `moemla-kernel-plan`, allocates its outputs (not zero-filled: the
//! kernels write every element), takes the backend's stream state (workspace and error
//! flags) for as long as it enqueues, launches, and returns without waiting for the
//! device. Index errors surface at the next [`GpuRunner::synchronize`] or
//! [`GpuRunner::download`] (see [`crate::flags`]).

mod dsa_indexer_topk;
mod mla_cache_write;
mod mla_decode;
mod mla_kv_quantize;
mod mla_sparse_decode;
mod moe_experts;
mod moe_route;
mod split_k;
mod tracked;

use crate::args::Arg;
use crate::device::{check_len, GpuBuffer, GpuDevice};
use crate::flags::{FlagArena, FlagCheck, FlagKind};
use crate::module::Module;
use moemla_core::calls::{
    DsaIndexerTopkCall, DsaIndexerTopkOutput, MlaCacheWriteCall, MlaDecodeCall, MlaDecodeOutput,
    MlaKvQuantizeCall, MlaSparseDecodeCall, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::memory::{self, TrafficCounter};
use moemla_core::Traffic;
use moemla_core::{DType, DeviceTensor, Error, Format, HostTensor, Op, OpSupport, Result, Shape};
use moemla_kernel_plan::{Launch, PlanError};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};
use tracked::Tracked;

/// What the CUDA and HIP kernels implement, as `BackendInfo::supported` lists it: the v1
/// ops in every float dtype and the contract-v2 variants the kernels have.
pub fn supported() -> Vec<OpSupport> {
    let mut all = OpSupport::all_v1();
    for dtype in DType::FLOATS {
        for format in [Format::Sqrtsoftplus, Format::HashRouting] {
            all.push(OpSupport::with_format(Op::MoeRoute, dtype, format));
        }
        for format in [
            Format::Fp8Weights,
            Format::Fp8Activations,
            Format::SwigluLimit,
            Format::SharedExperts,
        ] {
            all.push(OpSupport::with_format(Op::MoeExperts, dtype, format));
        }
        all.push(OpSupport::new(Op::MlaSparseDecode, dtype));
        all.push(OpSupport::new(Op::DsaIndexerTopk, dtype));
        if dtype != DType::F32 {
            // The FP8 cache takes 16-bit queries (the contract).
            for op in [Op::MlaDecode, Op::MlaSparseDecode] {
                all.push(OpSupport::with_format(op, dtype, Format::Fp8DsV32));
            }
        }
        all.push(OpSupport::new(Op::MlaKvQuantize, dtype));
        all.push(OpSupport::with_format(
            Op::MlaKvQuantize,
            dtype,
            Format::Fp8DsV32,
        ));
        all.push(OpSupport::new(Op::MlaCacheWrite, dtype));
        all.push(OpSupport::with_format(
            Op::MlaCacheWrite,
            dtype,
            Format::Fp8DsV32,
        ));
    }
    all
}

/// What the ops share on the backend's one stream: the workspace they reuse and the
/// error flags. Held by an op for as long as it enqueues, so that one op's launches are
/// consecutive on the stream and its workspace is not another's until it has run.
struct StreamState<B> {
    workspace: Option<B>,
    flags: FlagArena<B>,
}

/// The CUDA/HIP implementation of the `Backend` methods over a device `D`.
pub struct GpuRunner<D: GpuDevice> {
    dev: Tracked<D>,
    name: Arc<str>,
    stream: Mutex<StreamState<D::Buffer>>,
}

impl<D: GpuDevice> GpuRunner<D> {
    /// A runner on `dev` for the backend named `name` (`cuda`, `hip:1`): its tensors
    /// carry that name, and its checks and errors name it, so that a tensor of another
    /// device of the same API is a `WrongBackend` error here.
    pub fn new(dev: D, name: impl Into<Arc<str>>) -> Self {
        GpuRunner {
            dev: Tracked {
                inner: dev,
                traffic: Arc::new(TrafficCounter::default()),
            },
            name: name.into(),
            stream: Mutex::new(StreamState {
                workspace: None,
                flags: FlagArena::default(),
            }),
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev.inner
    }

    /// A runner on the same device, memory and loaded kernels that enqueues everything on
    /// the caller's `stream` (`Backend::with_queue`), with its own workspace and error
    /// flags (reported by its own synchronize and downloads) and the same traffic counts.
    /// A null handle is `Error::Queue`.
    ///
    /// # Safety
    ///
    /// The contract of `GpuDevice::with_stream`.
    pub unsafe fn with_stream(&self, stream: *mut c_void) -> Result<Self> {
        if stream.is_null() {
            return Err(Error::Queue {
                backend: self.name.to_string(),
                reason: "a null stream handle".into(),
            });
        }
        // SAFETY: the caller upholds `GpuDevice::with_stream`'s contract.
        let dev = unsafe { self.dev.with_stream(stream)? };
        Ok(GpuRunner {
            dev,
            name: self.name.clone(),
            stream: Mutex::new(StreamState {
                workspace: None,
                flags: FlagArena::default(),
            }),
        })
    }

    /// Copies and allocations so far, this runner's and its stream handles' together.
    pub fn traffic(&self) -> Traffic {
        self.dev.traffic.get()
    }

    /// A tensor over `bytes` bytes of caller memory at device address `ptr`, never freed by
    /// moemla (`Backend::wrap_raw`). A null or misaligned `ptr`, or `bytes` other than
    /// the shape's size, is `Error::Tensor`.
    ///
    /// # Safety
    ///
    /// The contract of `DeviceTensor::from_raw`.
    pub unsafe fn wrap_raw(
        &self,
        ptr: *mut c_void,
        bytes: usize,
        shape: &Shape,
        dtype: DType,
    ) -> Result<DeviceTensor> {
        let wanted = shape.byte_len(dtype)?;
        let problem = if ptr.is_null() {
            Some("a null pointer".to_string())
        } else if !(ptr as usize).is_multiple_of(dtype.size_in_bytes()) {
            Some(format!(
                "{ptr:p} is not aligned to {} bytes",
                dtype.size_in_bytes()
            ))
        } else if bytes != wanted {
            Some(format!(
                "{bytes} bytes for a {dtype} tensor of shape {shape} ({wanted} bytes)"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::Tensor(format!("{} wrap_raw: {problem}", self.name)));
        }
        // SAFETY: the caller upholds `from_raw`'s contract: `ptr` addresses `bytes` bytes
        // of this device's memory, alive for the tensor's uses.
        let buffer = unsafe { self.dev.wrap(ptr, bytes)? };
        Ok(self.tensor(buffer, shape.clone(), dtype))
    }

    /// Writes all of `src` into `dst` from element `dst_offset`, in stream order
    /// (`Backend::upload_into`).
    pub fn upload_into(
        &self,
        src: &HostTensor,
        dst: &DeviceTensor,
        dst_offset: usize,
    ) -> Result<()> {
        const CALL: &str = "upload_into";
        let range = memory::upload_range(src, dst, dst_offset)?;
        let buffer = self.buffer(dst, CALL, "dst")?;
        check_len(&self.name, CALL, buffer, range.end)?;
        if range.is_empty() {
            return Ok(());
        }
        self.dev.enter()?;
        self.dev.upload_into(buffer, range.start, src.as_bytes())
    }

    /// Copies `len` elements of `src` from element `src_offset` into `dst` at element
    /// `dst_offset`, on the device, in stream order (`Backend::copy_into`); overlapping
    /// ranges go through a temporary.
    pub fn copy_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &DeviceTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        const CALL: &str = "copy_into";
        let (s, d) = memory::copy_ranges(src, src_offset, dst, dst_offset, len)?;
        let (from, to) = (
            self.buffer(src, CALL, "src")?,
            self.buffer(dst, CALL, "dst")?,
        );
        check_len(&self.name, CALL, from, s.end)?;
        check_len(&self.name, CALL, to, d.end)?;
        let bytes = s.len();
        if bytes == 0 {
            return Ok(());
        }
        self.dev.enter()?;
        // Device addresses of both ranges (in range: the buffers hold them).
        let (a, b) = (
            from.address() + s.start as u64,
            to.address() + d.start as u64,
        );
        if a < b + bytes as u64 && b < a + bytes as u64 {
            let temp = self.dev.alloc(bytes)?;
            self.dev.copy(from, s.start, &temp, 0, bytes)?;
            return self.dev.copy(&temp, 0, to, d.start, bytes);
        }
        self.dev.copy(from, s.start, to, d.start, bytes)
    }

    /// Reads `dst.elem_count()` elements of `src` from element `src_offset` into `dst`,
    /// after all enqueued work; first reports a pending index error of an earlier op
    /// (`Backend::download_into`).
    pub fn download_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &mut HostTensor,
    ) -> Result<()> {
        const CALL: &str = "download_into";
        let range = memory::download_range(src, src_offset, dst)?;
        let buffer = self.buffer(src, CALL, "src")?;
        check_len(&self.name, CALL, buffer, range.end)?;
        self.dev.enter()?;
        self.check()?;
        if range.is_empty() {
            return Ok(());
        }
        self.dev.read(buffer, range.start, dst.as_bytes_mut())
    }

    /// The backend's name, as its tensors carry it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A tensor of this backend over `buffer`.
    pub fn tensor(&self, buffer: D::Buffer, shape: impl Into<Shape>, dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(buffer), self.name.clone(), shape, dtype)
    }

    /// The buffer of a tensor of this backend (`WrongBackend` naming `call` and `arg`
    /// otherwise).
    pub fn buffer<'a>(
        &self,
        t: &'a DeviceTensor,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&'a D::Buffer> {
        t.buffer::<D::Buffer>(&self.name, call, arg)
    }

    /// A zero-filled tensor (the fill is enqueued, not waited for).
    pub fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let bytes = shape.byte_len(dtype)?;
        self.dev.enter()?;
        let buffer = self.dev.alloc(bytes)?;
        self.dev.fill(&buffer, bytes, 0)?;
        Ok(self.tensor(buffer, shape.clone(), dtype))
    }

    /// Copies a host tensor to the device.
    pub fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        self.dev.enter()?;
        let buffer = self.dev.upload(host.as_bytes())?;
        Ok(self.tensor(buffer, host.shape().clone(), host.dtype()))
    }

    /// Copies a tensor to the host after all enqueued work; first reports a pending index
    /// error of an earlier op (see [`GpuRunner::synchronize`]).
    pub fn download(&self, t: &DeviceTensor) -> Result<HostTensor> {
        let buffer = self.buffer(t, "download", "tensor")?;
        let bytes = t.shape().byte_len(t.dtype())?;
        self.dev.enter()?;
        self.check()?;
        let data = self.dev.download(buffer, bytes)?;
        HostTensor::from_bytes(t.shape().clone(), t.dtype(), data)
    }

    /// Waits for all enqueued work, then reports the first index error an op enqueued since
    /// the last check met on the device (in enqueue order), as `IndexOutOfRange` naming
    /// that op, the argument and the first bad position. Reported once: the flags are
    /// reset, and the backend stays usable.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.enter()?;
        self.check()
    }

    fn check(&self) -> Result<()> {
        let mut stream = self.lock();
        self.dev.synchronize()?;
        match stream.flags.take_error(&self.dev, &self.name)? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `moe_route` (one launch) into fresh outputs.
    pub fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        self.dev.enter()?;
        let dims = [call.tokens, call.params.top_k];
        let out = MoeRouteOutput {
            topk_ids: self.uninit(&dims, DType::I32)?,
            topk_weights: self.uninit(&dims, DType::F32)?,
        };
        moe_route::run(self, call, &out.topk_ids, &out.topk_weights)?;
        Ok(out)
    }

    /// `moe_route` writing the caller's `topk_ids` / `topk_weights` (checked by core):
    /// nothing allocated.
    pub fn moe_route_into(
        &self,
        call: &MoeRouteCall<'_>,
        topk_ids: &DeviceTensor,
        topk_weights: &DeviceTensor,
    ) -> Result<()> {
        self.dev.enter()?;
        moe_route::run(self, call, topk_ids, topk_weights)
    }

    /// `moe_experts` (four launches) into a fresh `y`; bad `topk_ids` surface at the next
    /// synchronize.
    pub fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        self.dev.enter()?;
        let y = self.uninit(&[call.tokens, call.hidden], call.dtype)?;
        moe_experts::run(self, call, &y)?;
        Ok(y)
    }

    /// `moe_experts` writing the caller's `y`: nothing allocated after the workspace has
    /// grown to the call's size.
    pub fn moe_experts_into(&self, call: &MoeExpertsCall<'_>, y: &DeviceTensor) -> Result<()> {
        self.dev.enter()?;
        moe_experts::run(self, call, y)
    }

    /// `mla_decode` (three launches) into fresh outputs; bad `cache_seqlens` /
    /// `block_table` entries surface at the next synchronize.
    pub fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.dev.enter()?;
        let out = self.attention_outputs([call.batch, call.s_q, call.h_q, call.d_v], call.dtype)?;
        mla_decode::run(self, call, &out.o, &out.lse)?;
        Ok(out)
    }

    /// `mla_decode` writing the caller's `o` / `lse`: nothing allocated after the
    /// workspace has grown to the call's size.
    pub fn mla_decode_into(
        &self,
        call: &MlaDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        self.dev.enter()?;
        mla_decode::run(self, call, o, lse)
    }

    /// `mla_kv_quantize` (one launch); a non-finite `kv` value surfaces at the next
    /// synchronize.
    pub fn mla_kv_quantize(&self, call: &MlaKvQuantizeCall<'_>) -> Result<DeviceTensor> {
        self.dev.enter()?;
        let out = self.uninit(&[call.rows, moemla_core::fp8::DS_V32_ROW_BYTES], DType::U8)?;
        mla_kv_quantize::run(self, call, &out)?;
        Ok(out)
    }

    /// `mla_kv_quantize` writing the caller's `kv_fp8` (checked by core): nothing
    /// allocated after the flags exist.
    pub fn mla_kv_quantize_into(
        &self,
        call: &MlaKvQuantizeCall<'_>,
        kv_fp8: &DeviceTensor,
    ) -> Result<()> {
        self.dev.enter()?;
        mla_kv_quantize::run(self, call, kv_fp8)
    }

    /// `mla_sparse_decode` (three launches) into fresh outputs; bad `topk_length` /
    /// `indices` entries surface at the next synchronize.
    pub fn mla_sparse_decode(&self, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.dev.enter()?;
        let out = self.attention_outputs([call.batch, call.s_q, call.h_q, call.d_v], call.dtype)?;
        mla_sparse_decode::run(self, call, &out.o, &out.lse)?;
        Ok(out)
    }

    /// `mla_sparse_decode` writing the caller's `o` / `lse`: nothing allocated after the
    /// workspace has grown to the call's size.
    pub fn mla_sparse_decode_into(
        &self,
        call: &MlaSparseDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        self.dev.enter()?;
        mla_sparse_decode::run(self, call, o, lse)
    }

    /// `mla_cache_write` (one launch) into the caller's cache in place; bad slots (and
    /// non-finite values of `fp8_ds_v32` rows) surface at the next synchronize, and their
    /// rows are not written.
    pub fn mla_cache_write(&self, call: &MlaCacheWriteCall<'_>) -> Result<()> {
        mla_cache_write::run(self, call)
    }

    /// `dsa_indexer_topk` (three launches); bad `cache_seqlens` / `block_table` entries
    /// surface at the next synchronize.
    pub fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        self.dev.enter()?;
        let dims = [call.batch, call.s_q, call.params.top_k];
        let out = DsaIndexerTopkOutput {
            topk_indices: self.uninit(&dims, DType::I32)?,
            topk_scores: self.uninit(&dims, DType::F32)?,
        };
        dsa_indexer_topk::run(self, call, &out.topk_indices, &out.topk_scores)?;
        Ok(out)
    }

    /// `dsa_indexer_topk` writing the caller's `topk_indices` / `topk_scores` (checked by
    /// core): nothing allocated after the workspace has grown to the call's size.
    pub fn dsa_indexer_topk_into(
        &self,
        call: &DsaIndexerTopkCall<'_>,
        topk_indices: &DeviceTensor,
        topk_scores: &DeviceTensor,
    ) -> Result<()> {
        self.dev.enter()?;
        dsa_indexer_topk::run(self, call, topk_indices, topk_scores)
    }

    fn lock(&self) -> MutexGuard<'_, StreamState<D::Buffer>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An uninitialised tensor of `dims` (the op's kernels write every element).
    fn uninit(&self, dims: &[usize], dtype: DType) -> Result<DeviceTensor> {
        let shape = Shape::new(dims.to_vec());
        let bytes = shape.byte_len(dtype)?;
        Ok(self.tensor(self.dev.alloc(bytes)?, shape, dtype))
    }

    /// The attention ops' fresh outputs: `o` [B, Sq, Hq, Dv] in `dtype`, `lse` [B, Hq, Sq]
    /// F32.
    fn attention_outputs(
        &self,
        [b, s_q, h_q, d_v]: [usize; 4],
        dtype: DType,
    ) -> Result<MlaDecodeOutput> {
        Ok(MlaDecodeOutput {
            o: self.uninit(&[b, s_q, h_q, d_v], dtype)?,
            lse: self.uninit(&[b, h_q, s_q], DType::F32)?,
        })
    }

    /// The buffer of an output tensor `t` (argument `arg`) that an op writes whole: of
    /// this backend, and holding all of its shape.
    fn out_buffer<'a>(
        &self,
        t: &'a DeviceTensor,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&'a D::Buffer> {
        let buffer = self.buffer(t, call, arg)?;
        crate::device::check_len(&self.name, call, buffer, t.shape().byte_len(t.dtype())?)?;
        Ok(buffer)
    }

    /// The contract's `Unsupported` for a problem the plans cannot launch.
    fn plan_error(&self, e: PlanError) -> Error {
        e.into_error(&self.name)
    }

    /// A kernel's `int` parameter; the plans have checked every size, so a value beyond
    /// `i32::MAX` is a typed error here, never a wrap.
    fn int(&self, op: Op, what: &str, value: usize) -> Result<Arg> {
        i32::try_from(value)
            .map(Arg::I32)
            .map_err(|_| Error::Unsupported {
                backend: self.name.to_string(),
                op,
                what: format!("{what} = {value}"),
                reason: "exceeds the kernels' int parameters".into(),
            })
    }

    /// Enqueues one planned launch; a grid with a zero dimension (an empty problem)
    /// launches nothing.
    fn launch(&self, module: Module, launch: &Launch, args: &[Arg]) -> Result<()> {
        if launch.grid.contains(&0) {
            return Ok(());
        }
        self.dev.launch(module, launch, args)
    }
}

/// The `Backend` methods a CUDA/HIP backend forwards to its [`GpuRunner`] field: memory,
/// copies, synchronize, the v1 ops and the v2 ops the kernels have. Write
/// `runner_backend_methods!(field);` inside the backend's `impl Backend` block, beside its
/// own `name`, `info` and extras.
#[macro_export]
macro_rules! runner_backend_methods {
    ($gpu:ident) => {
        fn alloc_zeroed(
            &self,
            shape: &$crate::__core::Shape,
            dtype: $crate::__core::DType,
        ) -> $crate::__core::Result<$crate::__core::DeviceTensor> {
            self.$gpu.alloc_zeroed(shape, dtype)
        }

        fn upload(
            &self,
            host: &$crate::__core::HostTensor,
        ) -> $crate::__core::Result<$crate::__core::DeviceTensor> {
            self.$gpu.upload(host)
        }

        fn download(
            &self,
            tensor: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<$crate::__core::HostTensor> {
            self.$gpu.download(tensor)
        }

        fn synchronize(&self) -> $crate::__core::Result<()> {
            self.$gpu.synchronize()
        }

        unsafe fn wrap_raw(
            &self,
            ptr: *mut ::std::ffi::c_void,
            bytes: usize,
            shape: &$crate::__core::Shape,
            dtype: $crate::__core::DType,
        ) -> $crate::__core::Result<$crate::__core::DeviceTensor> {
            // SAFETY: the caller upholds `Backend::wrap_raw`'s contract.
            unsafe { self.$gpu.wrap_raw(ptr, bytes, shape, dtype) }
        }

        fn upload_into(
            &self,
            src: &$crate::__core::HostTensor,
            dst: &$crate::__core::DeviceTensor,
            dst_offset: usize,
        ) -> $crate::__core::Result<()> {
            self.$gpu.upload_into(src, dst, dst_offset)
        }

        fn copy_into(
            &self,
            src: &$crate::__core::DeviceTensor,
            src_offset: usize,
            dst: &$crate::__core::DeviceTensor,
            dst_offset: usize,
            len: usize,
        ) -> $crate::__core::Result<()> {
            self.$gpu.copy_into(src, src_offset, dst, dst_offset, len)
        }

        fn download_into(
            &self,
            src: &$crate::__core::DeviceTensor,
            src_offset: usize,
            dst: &mut $crate::__core::HostTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu.download_into(src, src_offset, dst)
        }

        fn traffic(&self) -> Option<$crate::__core::Traffic> {
            Some(self.$gpu.traffic())
        }

        fn moe_route(
            &self,
            call: &$crate::__core::calls::MoeRouteCall<'_>,
        ) -> $crate::__core::Result<$crate::__core::calls::MoeRouteOutput> {
            self.$gpu.moe_route(call)
        }

        fn moe_experts(
            &self,
            call: &$crate::__core::calls::MoeExpertsCall<'_>,
        ) -> $crate::__core::Result<$crate::__core::DeviceTensor> {
            self.$gpu.moe_experts(call)
        }

        fn mla_decode(
            &self,
            call: &$crate::__core::calls::MlaDecodeCall<'_>,
        ) -> $crate::__core::Result<$crate::__core::calls::MlaDecodeOutput> {
            self.$gpu.mla_decode(call)
        }

        fn moe_route_into(
            &self,
            call: &$crate::__core::calls::MoeRouteCall<'_>,
            topk_ids: &$crate::__core::DeviceTensor,
            topk_weights: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu.moe_route_into(call, topk_ids, topk_weights)
        }

        fn moe_experts_into(
            &self,
            call: &$crate::__core::calls::MoeExpertsCall<'_>,
            y: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu.moe_experts_into(call, y)
        }

        fn mla_decode_into(
            &self,
            call: &$crate::__core::calls::MlaDecodeCall<'_>,
            o: &$crate::__core::DeviceTensor,
            lse: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu.mla_decode_into(call, o, lse)
        }

        fn mla_sparse_decode_into(
            &self,
            call: &$crate::__core::calls::MlaSparseDecodeCall<'_>,
            o: &$crate::__core::DeviceTensor,
            lse: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu.mla_sparse_decode_into(call, o, lse)
        }

        fn mla_kv_quantize(
            &self,
            call: &$crate::__core::calls::MlaKvQuantizeCall<'_>,
        ) -> $crate::__core::Result<$crate::__core::DeviceTensor> {
            self.$gpu.mla_kv_quantize(call)
        }

        fn mla_sparse_decode(
            &self,
            call: &$crate::__core::calls::MlaSparseDecodeCall<'_>,
        ) -> $crate::__core::Result<$crate::__core::calls::MlaDecodeOutput> {
            self.$gpu.mla_sparse_decode(call)
        }

        fn dsa_indexer_topk(
            &self,
            call: &$crate::__core::calls::DsaIndexerTopkCall<'_>,
        ) -> $crate::__core::Result<$crate::__core::calls::DsaIndexerTopkOutput> {
            self.$gpu.dsa_indexer_topk(call)
        }

        fn mla_cache_write(
            &self,
            call: &$crate::__core::calls::MlaCacheWriteCall<'_>,
        ) -> $crate::__core::Result<()> {
            self.$gpu.mla_cache_write(call)
        }

        fn mla_kv_quantize_into(
            &self,
            call: &$crate::__core::calls::MlaKvQuantizeCall<'_>,
            kv_fp8: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu.mla_kv_quantize_into(call, kv_fp8)
        }

        fn dsa_indexer_topk_into(
            &self,
            call: &$crate::__core::calls::DsaIndexerTopkCall<'_>,
            topk_indices: &$crate::__core::DeviceTensor,
            topk_scores: &$crate::__core::DeviceTensor,
        ) -> $crate::__core::Result<()> {
            self.$gpu
                .dsa_indexer_topk_into(call, topk_indices, topk_scores)
        }
    };
}

impl<B: GpuBuffer> StreamState<B> {
    /// The base address of a workspace of at least `bytes` bytes, reused across ops (the
    /// stream runs them in order); a larger one replaces it when needed.
    fn workspace<D: GpuDevice<Buffer = B>>(&mut self, dev: &D, bytes: usize) -> Result<u64> {
        if self.workspace.as_ref().is_none_or(|w| w.bytes() < bytes) {
            // The old buffer is released by the device in stream order, never waited for.
            self.workspace = Some(dev.alloc(bytes)?);
        }
        Ok(self.workspace.as_ref().map_or(0, |w| w.address()))
    }
}

/// The address of a workspace region.
fn at(base: u64, region: moemla_kernel_plan::Region) -> Arg {
    Arg::Ptr(base + region.offset as u64)
}

/// The flag check of an index argument.
fn flag_check(arg: &'static str, t: &DeviceTensor, valid: String) -> FlagCheck {
    FlagCheck {
        arg,
        shape: t.shape().clone(),
        valid,
        kind: FlagKind::Range,
    }
}

#[cfg(test)]
mod tests;
