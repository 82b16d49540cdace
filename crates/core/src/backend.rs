//! The `Backend` trait every device family implements, and what a backend says about itself.

use crate::calls::{
    DsaIndexerTopkCall, DsaIndexerTopkOutput, MlaCacheWriteCall, MlaDecodeCall, MlaDecodeOutput,
    MlaKvQuantizeCall, MlaSparseDecodeCall, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use crate::{DType, DeviceTensor, Error, HostTensor, Op, Result, Shape};
use serde::{Deserialize, Serialize};
use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

/// A device family's implementation of the ops.
///
/// The v1 ops are required; the v2 ops have default implementations that return
/// [`Error::Unsupported`], and the v2 variants of the v1 ops (FP8 weights, the FP8 cache,
/// new score functions, ...: [`Format`]) only reach a backend that lists them in
/// [`BackendInfo::supported`] ([`crate::ops`] refuses them otherwise), so a backend written
/// for v1 keeps compiling and reports v2 as unsupported.
///
/// Object safe: integrators hold backends as `Arc<dyn Backend>`. The op methods receive
/// calls that [`crate::ops`] has already validated (shapes, dtypes, parameters), so every
/// backend rejects malformed input identically; index *contents* (expert ids, block-table
/// entries, sequence lengths) may live on the device and are the backend's to check,
/// returning [`crate::Error::IndexOutOfRange`] for the first bad element, without reading
/// out of bounds. Call the ops through [`crate::ops`], not these methods.
pub trait Backend: Send + Sync {
    /// The backend's name (`cpu`, `opencl`, `cuda`, ...), also stamped on its tensors.
    fn name(&self) -> &str;

    /// Device, capabilities and verification status.
    fn info(&self) -> BackendInfo;

    /// A zero-filled tensor on the device.
    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor>;

    /// Copies a host tensor to the device.
    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor>;

    /// Copies a device tensor to the host (waits for pending work on it).
    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor>;

    /// Waits until all submitted work has finished.
    fn synchronize(&self) -> Result<()>;

    /// Wraps `bytes` bytes of memory the caller owns at `ptr` as a tensor of `shape` and
    /// `dtype` (`bytes` is `shape.byte_len(dtype)`), without copying or taking ownership.
    /// Optional: the default is [`Error::NotProvided`]. Use [`DeviceTensor::from_raw`].
    ///
    /// # Safety
    ///
    /// The contract of [`DeviceTensor::from_raw`].
    unsafe fn wrap_raw(
        &self,
        ptr: *mut c_void,
        bytes: usize,
        shape: &Shape,
        dtype: DType,
    ) -> Result<DeviceTensor> {
        let _ = (ptr, bytes, shape, dtype);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "wrap_raw",
        })
    }

    /// Writes all of `src` into `dst` in place, at element `dst_offset` (elements of the
    /// common dtype), ordered after the work already enqueued. Fails with
    /// [`Error::DTypeMismatch`] when the dtypes differ, [`Error::OutOfBounds`] when the
    /// range does not fit (see [`crate::memory`]); nothing is written then. Optional: the
    /// default is [`Error::NotProvided`].
    fn upload_into(&self, src: &HostTensor, dst: &DeviceTensor, dst_offset: usize) -> Result<()> {
        let _ = (src, dst, dst_offset);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "upload_into",
        })
    }

    /// Copies `len` elements of `src` from element `src_offset` into `dst` at element
    /// `dst_offset`, on the device, ordered after the work already enqueued. The ranges
    /// may overlap only within one buffer. Errors as [`Backend::upload_into`]. Optional:
    /// the default is [`Error::NotProvided`].
    fn copy_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &DeviceTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let _ = (src, src_offset, dst, dst_offset, len);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "copy_into",
        })
    }

    /// Reads `dst.elem_count()` elements of `src`, from element `src_offset`, into the
    /// caller's host tensor `dst` (overwritten; reused across calls, so a decode step reads
    /// its logits or ids without allocating). Waits for the work enqueued before it, and,
    /// like [`Backend::download`], first reports a pending index error of an earlier op.
    /// Fails with [`Error::DTypeMismatch`] when the dtypes differ and [`Error::OutOfBounds`]
    /// when the range does not lie within `src` (see [`crate::memory`]); `dst` is not
    /// written then. Optional: the default is [`Error::NotProvided`].
    fn download_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &mut HostTensor,
    ) -> Result<()> {
        let _ = (src, src_offset, dst);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "download_into",
        })
    }

    /// A handle on the same device and memory as `self` that enqueues every op, copy and
    /// download on the caller's `queue` (OpenCL: a `cl_command_queue` of the backend's
    /// context; CUDA/HIP: a stream of its context; Ascend: an `aclrtStream`). Tensors are
    /// interchangeable between the handle and the backend (same name, same memory); work
    /// is ordered within each queue, and ordering *between* queues is the caller's (an
    /// event or a synchronize). Index errors the handle's ops find are reported by the
    /// handle's next [`Backend::synchronize`] / download, as for the backend's own queue.
    /// [`Backend::traffic`] counts both together. A handle the backend cannot use (null,
    /// another context or device, out-of-order execution) is [`Error::Queue`]. Optional:
    /// the default is [`Error::NotProvided`] (also where the backend has no queues, as on
    /// the CPU).
    ///
    /// # Safety
    ///
    /// `queue` is null or a valid queue/stream handle of the backend's API. The backend
    /// takes its own reference where the API counts them (OpenCL retains the queue);
    /// otherwise (CUDA/HIP/ACL streams) the caller keeps the stream alive until the handle
    /// and every tensor it wrote are dropped and its work has finished. Nothing else may
    /// destroy the queue's context while the handle lives.
    unsafe fn with_queue(&self, queue: *mut c_void) -> Result<Arc<dyn Backend>> {
        let _ = queue;
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "with_queue",
        })
    }

    /// Host<->device transfers and device allocations since the backend was created
    /// (handles from [`Backend::with_queue`] add to their backend's), so an engine can check
    /// that a decode step moves and allocates nothing after warm-up. `None`: not counted.
    fn traffic(&self) -> Option<Traffic> {
        None
    }

    /// `w`, an expert weight tensor of this backend (`kind`: `w13`/`shared_w13` [E, 2I, H]
    /// or `w2`/`shared_w2` [E, H, I], checked by [`crate::ops::pack_expert_weights`]), laid
    /// out once, at load, the way the backend's `moe_experts` kernels read it fastest. The
    /// result has `w`'s shape and dtype and is accepted by `moe_experts` as the argument of
    /// that kind; what else accepts it is the backend's to say (the CPU backend downloads it
    /// and refuses it elsewhere with a typed error). The default returns `w` itself: the
    /// contract's layout is the backend's.
    fn pack_expert_weights(&self, w: &DeviceTensor, kind: ExpertWeight) -> Result<DeviceTensor> {
        let _ = kind;
        Ok(w.clone())
    }

    /// `moe_route` writing into caller tensors that [`crate::ops::moe_route_into`] has
    /// checked (contract shapes and dtypes, this backend, no aliasing). The default runs
    /// [`Backend::moe_route`] and copies its outputs with [`Backend::copy_into`].
    fn moe_route_into(
        &self,
        call: &MoeRouteCall<'_>,
        topk_ids: &DeviceTensor,
        topk_weights: &DeviceTensor,
    ) -> Result<()> {
        let out = self.moe_route(call)?;
        copy_whole(self, &out.topk_ids, topk_ids)?;
        copy_whole(self, &out.topk_weights, topk_weights)
    }

    /// `moe_experts` writing `y` into a caller tensor that [`crate::ops::moe_experts_into`]
    /// has checked. The default runs [`Backend::moe_experts`] and copies `y` with
    /// [`Backend::copy_into`].
    fn moe_experts_into(&self, call: &MoeExpertsCall<'_>, y: &DeviceTensor) -> Result<()> {
        let out = self.moe_experts(call)?;
        copy_whole(self, &out, y)
    }

    /// `mla_decode` writing into caller tensors that [`crate::ops::mla_decode_into`] has
    /// checked. The default runs [`Backend::mla_decode`] and copies its outputs with
    /// [`Backend::copy_into`].
    fn mla_decode_into(
        &self,
        call: &MlaDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        let out = self.mla_decode(call)?;
        copy_whole(self, &out.o, o)?;
        copy_whole(self, &out.lse, lse)
    }

    /// `mla_sparse_decode` writing into caller tensors that
    /// [`crate::ops::mla_sparse_decode_into`] has checked. The default runs
    /// [`Backend::mla_sparse_decode`] and copies its outputs with [`Backend::copy_into`].
    fn mla_sparse_decode_into(
        &self,
        call: &MlaSparseDecodeCall<'_>,
        o: &DeviceTensor,
        lse: &DeviceTensor,
    ) -> Result<()> {
        let out = self.mla_sparse_decode(call)?;
        copy_whole(self, &out.o, o)?;
        copy_whole(self, &out.lse, lse)
    }

    /// `mla_kv_quantize` writing `kv_fp8` into a caller tensor that
    /// [`crate::ops::mla_kv_quantize_into`] has checked. The default runs
    /// [`Backend::mla_kv_quantize`] and copies `kv_fp8` with [`Backend::copy_into`].
    fn mla_kv_quantize_into(
        &self,
        call: &MlaKvQuantizeCall<'_>,
        kv_fp8: &DeviceTensor,
    ) -> Result<()> {
        let out = self.mla_kv_quantize(call)?;
        copy_whole(self, &out, kv_fp8)
    }

    /// `dsa_indexer_topk` writing into caller tensors that
    /// [`crate::ops::dsa_indexer_topk_into`] has checked. The default runs
    /// [`Backend::dsa_indexer_topk`] and copies its outputs with [`Backend::copy_into`].
    fn dsa_indexer_topk_into(
        &self,
        call: &DsaIndexerTopkCall<'_>,
        topk_indices: &DeviceTensor,
        topk_scores: &DeviceTensor,
    ) -> Result<()> {
        let out = self.dsa_indexer_topk(call)?;
        copy_whole(self, &out.topk_indices, topk_indices)?;
        copy_whole(self, &out.topk_scores, topk_scores)
    }

    /// `moe_route` on validated input. Use [`crate::ops::moe_route`].
    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput>;

    /// `moe_experts` on validated input; returns `y` [T, H] in the run dtype.
    /// Use [`crate::ops::moe_experts`].
    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor>;

    /// `mla_decode` on validated input (with `kv_format` `fp8_ds_v32` only if the backend
    /// lists [`Format::Fp8DsV32`] for it). Use [`crate::ops::mla_decode`].
    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput>;

    /// `mla_kv_quantize` on validated input; returns `kv_fp8` [N, 656] U8. Optional (v2).
    /// Use [`crate::ops::mla_kv_quantize`].
    fn mla_kv_quantize(&self, call: &MlaKvQuantizeCall<'_>) -> Result<DeviceTensor> {
        Err(not_implemented(self.name(), Op::MlaKvQuantize, call.dtype))
    }

    /// `mla_sparse_decode` on validated input. Optional (v2).
    /// Use [`crate::ops::mla_sparse_decode`].
    fn mla_sparse_decode(&self, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        Err(not_implemented(
            self.name(),
            Op::MlaSparseDecode,
            call.dtype,
        ))
    }

    /// `dsa_indexer_topk` on validated input. Optional (v2).
    /// Use [`crate::ops::dsa_indexer_topk`].
    fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        Err(not_implemented(self.name(), Op::DsaIndexerTopk, call.dtype))
    }

    /// `mla_cache_write` on validated input: writes the rows of `call.kv` into the caller's
    /// `call.kv_cache` in place, at `call.slot_mapping` (the later row wins a slot two rows
    /// name). Optional (v2). Use [`crate::ops::mla_cache_write`].
    fn mla_cache_write(&self, call: &MlaCacheWriteCall<'_>) -> Result<()> {
        Err(not_implemented(self.name(), Op::MlaCacheWrite, call.dtype))
    }

    /// Whether the backend implements `support` (an entry of [`BackendInfo::supported`]).
    /// [`crate::ops`] asks before handing a backend a v2 variant ([`Format`]) of an op.
    /// The default looks it up in [`Backend::info`]; override it where `info` is costly.
    fn supports(&self, support: &OpSupport) -> bool {
        self.info().supported.contains(support)
    }

    /// Bandwidth ceiling for benchmarks: the median time of `reps` device-to-device copies
    /// of `bytes` bytes between two buffers allocated and touched beforehand (so neither
    /// allocation nor first-touch page faults are timed). Optional.
    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<std::time::Duration> {
        let _ = (bytes, reps);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "copy_bench",
        })
    }

    /// Compute ceiling for benchmarks: `c[M, N] = a[M, K] . b[N, K]^T` with the backend's
    /// best dense GEMM (f32 accumulation, `c` in the dtype of `a`). Optional.
    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let _ = (a, b);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "dense_gemm",
        })
    }

    /// Which implementation [`Backend::dense_gemm`] uses for `dtype` (e.g. "gemm crate
    /// 0.19, f32 compute", "cuBLAS bf16"), reported beside the ceiling it measures.
    fn dense_gemm_impl(&self, dtype: DType) -> String {
        let _ = dtype;
        "not provided".to_string()
    }

    /// Physical-limit ceilings for benchmarks, measured by the backend's own kernels on the
    /// whole device: the read bandwidth (a read-only reduction over a device buffer of
    /// about `read_bytes` bytes) and the f32 FMA peak (a register-resident FMA kernel),
    /// each the best of `reps` runs. The FMA peak bounds rows of every dtype only because a
    /// backend that provides it computes every dtype with f32 FMAs (OpenCL does); one with
    /// faster native low-precision arithmetic must not provide it as is. Optional.
    fn limits_bench(&self, read_bytes: usize, reps: usize) -> Result<MeasuredLimits> {
        let _ = (read_bytes, reps);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "limits_bench",
        })
    }
}

/// What [`Backend::limits_bench`] measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredLimits {
    /// Read bandwidth, bytes per second (each byte read once).
    pub read_bytes_per_s: f64,
    /// Bytes of the buffer it was measured on.
    pub read_bytes: usize,
    /// How the read bandwidth was measured (the kernel, its loads, its geometry).
    pub read_how: String,
    /// f32 FMA peak, FLOP/s (a fused multiply-add counts 2).
    pub fma_flops_per_s: f64,
    /// How the FMA peak was measured.
    pub fma_how: String,
}

/// What a backend has moved between host and device, and allocated on the device, since
/// it was created ([`Backend::traffic`]). Counts only grow; subtract two readings with
/// [`Traffic::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Host-to-device copies (uploads, `upload_into`, staging copies).
    pub uploads: u64,
    /// Bytes of those copies.
    pub upload_bytes: u64,
    /// Device-to-host copies (downloads, `download_into`, and reads a backend makes to
    /// check for errors, e.g. OpenCL's index-error flags at a synchronize or download).
    pub downloads: u64,
    /// Bytes of those copies.
    pub download_bytes: u64,
    /// Device memory allocations (tensors, and scratch a backend does not take from a
    /// pool).
    pub allocations: u64,
    /// Bytes of those allocations.
    pub allocation_bytes: u64,
}

impl Traffic {
    /// What happened between the reading `earlier` and this one (field by field).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            uploads: self.uploads.saturating_sub(earlier.uploads),
            upload_bytes: self.upload_bytes.saturating_sub(earlier.upload_bytes),
            downloads: self.downloads.saturating_sub(earlier.downloads),
            download_bytes: self.download_bytes.saturating_sub(earlier.download_bytes),
            allocations: self.allocations.saturating_sub(earlier.allocations),
            allocation_bytes: self
                .allocation_bytes
                .saturating_sub(earlier.allocation_bytes),
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} uploads ({} B), {} downloads ({} B), {} allocations ({} B)",
            self.uploads,
            self.upload_bytes,
            self.downloads,
            self.download_bytes,
            self.allocations,
            self.allocation_bytes
        )
    }
}

/// How far a backend's results have been checked, and where. A promise to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerificationKind {
    /// The reference implementation itself (checked against the golden set).
    Reference,
    /// Golden cases passed on real hardware.
    Silicon,
    /// Golden cases passed against an emulator of the vendor API.
    Emulator,
    /// Kernels compile for the target; never run on it.
    CompileOnly,
    /// Runs on this device, but the golden set has not been checked on it yet.
    Unverified,
    /// Runs by delegating every op to another backend, named in the detail
    /// ([`Verification::delegated`]): its results are that backend's, and so is its
    /// verification.
    Delegated,
    /// A plugin's own claim, in the plugin's words (the kind it claims and its detail, in
    /// the detail): moemla has not checked it.
    Plugin,
}

/// A verification status with its detail ("CPU via PoCL", "sm_80/sm_90 via NVRTC", ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The kind of evidence.
    pub kind: VerificationKind,
    /// Which device or tool, and when.
    pub detail: String,
}

impl Verification {
    /// The verification of a backend that delegates every op to the backend `to`: kind
    /// [`VerificationKind::Delegated`], detail "to `to`" and then `detail` if not empty.
    pub fn delegated(to: &str, detail: &str) -> Verification {
        Verification {
            kind: VerificationKind::Delegated,
            detail: match detail {
                "" => format!("to {to}"),
                _ => format!("to {to}: {detail}"),
            },
        }
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            VerificationKind::Reference => "reference",
            VerificationKind::Silicon => "silicon",
            VerificationKind::Emulator => "emulated",
            VerificationKind::CompileOnly => "compile-only",
            VerificationKind::Unverified => "unverified",
            VerificationKind::Delegated => "delegated",
            VerificationKind::Plugin => "plugin's claim",
        };
        if self.detail.is_empty() {
            f.write_str(kind)
        } else {
            write!(f, "{kind}: {}", self.detail)
        }
    }
}

/// Copies all of `dst`'s elements from `src` with [`Backend::copy_into`] (a wrongly sized
/// `src` is an [`Error::OutOfBounds`] there).
fn copy_whole<B: Backend + ?Sized>(
    backend: &B,
    src: &DeviceTensor,
    dst: &DeviceTensor,
) -> Result<()> {
    backend.copy_into(src, 0, dst, 0, dst.elem_count())
}

/// The default [`Backend`] v2 op: not implemented.
fn not_implemented(backend: &str, op: Op, dtype: DType) -> Error {
    Error::Unsupported {
        backend: backend.to_string(),
        op,
        what: dtype.name().to_string(),
        reason: "not implemented by this backend".to_string(),
    }
}

/// Which `moe_experts` weight a tensor is, for [`Backend::pack_expert_weights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertWeight {
    /// Gate and up projections, `w13` or `shared_w13` `[E, 2I, H]` (rows `0..I` gate,
    /// `I..2I` up).
    GateUp,
    /// Down projections, `w2` or `shared_w2` `[E, H, I]`.
    Down,
}

impl ExpertWeight {
    /// The routed experts' argument of this kind (`w13`, `w2`).
    pub fn arg(self) -> &'static str {
        match self {
            ExpertWeight::GateUp => "w13",
            ExpertWeight::Down => "w2",
        }
    }
}

/// A contract-v2 data format or variant of an op, which a backend implements only if it
/// lists it ([`OpSupport::format`]). A call that needs one a backend does not list fails
/// with [`Error::Unsupported`] before the backend sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `moe_route` with `score_func` `sqrtsoftplus`.
    Sqrtsoftplus,
    /// `moe_route` hash routing (`input_ids` + `tid2eid`).
    HashRouting,
    /// `moe_experts` with F8E4M3 weights and 128x128 block scales, activations unquantized
    /// (w8a16).
    Fp8Weights,
    /// `moe_experts` with `activation_quant` `fp8_block128` (w8a8; f32 and UE8M0 scales).
    /// Such a call also needs [`Format::Fp8Weights`].
    Fp8Activations,
    /// `moe_experts` with a `swiglu_limit`.
    SwigluLimit,
    /// `moe_experts` with dense shared experts (`shared_w13` + `shared_w2`) fused into the
    /// call.
    SharedExperts,
    /// The 656-byte FP8 latent cache (`mla_decode`, `mla_sparse_decode`, `mla_kv_quantize`,
    /// `mla_cache_write`).
    Fp8DsV32,
}

impl Format {
    /// Every format, in declaration order.
    pub const ALL: [Format; 7] = [
        Format::Sqrtsoftplus,
        Format::HashRouting,
        Format::Fp8Weights,
        Format::Fp8Activations,
        Format::SwigluLimit,
        Format::SharedExperts,
        Format::Fp8DsV32,
    ];

    /// The name in reports (`fp8_ds_v32`, `hash_routing`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Format::Sqrtsoftplus => "sqrtsoftplus",
            Format::HashRouting => "hash_routing",
            Format::Fp8Weights => "fp8_weights",
            Format::Fp8Activations => "fp8_activations",
            Format::SwigluLimit => "swiglu_limit",
            Format::SharedExperts => "shared_experts",
            Format::Fp8DsV32 => "fp8_ds_v32",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One (op, run dtype[, format]) a backend implements. Without a format: the op's plain
/// form (v1's, or a v2 op's dense form); with one: that v2 variant too (a call using it needs
/// both entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpSupport {
    /// The op.
    pub op: Op,
    /// The run dtype (see the contract: logits for moe_route, x for moe_experts, q for
    /// mla_decode / mla_sparse_decode / dsa_indexer_topk, kv for mla_kv_quantize and
    /// mla_cache_write).
    pub dtype: DType,
    /// The v2 format or variant, if this entry is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

impl OpSupport {
    /// The plain form of `op` in run dtype `dtype`.
    pub fn new(op: Op, dtype: DType) -> OpSupport {
        OpSupport {
            op,
            dtype,
            format: None,
        }
    }

    /// Variant `format` of `op` in run dtype `dtype`.
    pub fn with_format(op: Op, dtype: DType, format: Format) -> OpSupport {
        OpSupport {
            op,
            dtype,
            format: Some(format),
        }
    }

    /// Every v1 op in every float dtype.
    pub fn all_v1() -> Vec<OpSupport> {
        Op::V1
            .into_iter()
            .flat_map(|op| DType::FLOATS.map(|dtype| OpSupport::new(op, dtype)))
            .collect()
    }

    /// Everything contract v2 defines: every op in every float dtype, and every format the
    /// op has in every dtype the contract allows it (the FP8 cache with F16/BF16 queries
    /// for the attention ops).
    pub fn all_v2() -> Vec<OpSupport> {
        let mut all = Vec::new();
        for op in Op::ALL {
            for dtype in DType::FLOATS {
                all.push(OpSupport::new(op, dtype));
                let formats: &[Format] = match op {
                    Op::MoeRoute => &[Format::Sqrtsoftplus, Format::HashRouting],
                    Op::MoeExperts => &[
                        Format::Fp8Weights,
                        Format::Fp8Activations,
                        Format::SwigluLimit,
                        Format::SharedExperts,
                    ],
                    Op::MlaKvQuantize | Op::MlaCacheWrite => &[Format::Fp8DsV32],
                    Op::MlaDecode | Op::MlaSparseDecode if dtype != DType::F32 => {
                        &[Format::Fp8DsV32]
                    }
                    _ => &[],
                };
                all.extend(
                    formats
                        .iter()
                        .map(|&f| OpSupport::with_format(op, dtype, f)),
                );
            }
        }
        all
    }
}

impl fmt::Display for OpSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.dtype)?;
        match self.format {
            Some(format) => write!(f, " {format}"),
            None => Ok(()),
        }
    }
}

/// What kind of device a backend runs on; `moemla::select(None)` prefers accelerators,
/// then CPUs, then emulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// Real accelerator silicon: a GPU, an NPU, an OpenCL GPU or accelerator device.
    Accelerator,
    /// The host CPU (the native CPU backend, or an OpenCL CPU device such as PoCL).
    Cpu,
    /// Software emulating an accelerator's API on the host (e.g. the CANN C-API emulator).
    Emulator,
}

impl DeviceKind {
    /// "accelerator", "cpu" or "emulator".
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Accelerator => "accelerator",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Emulator => "emulator",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a backend reports about itself (`moemla devices`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Backend name, as in [`Backend::name`].
    pub name: String,
    /// Hardware vendor or software stack ("NVIDIA", "AMD ROCm", "PoCL", "moemla").
    pub vendor: String,
    /// Device name as the driver reports it.
    pub device: String,
    /// What kind of device that is (accelerator, CPU, emulator).
    pub device_kind: DeviceKind,
    /// Device memory in bytes, where known.
    pub memory_bytes: Option<u64>,
    /// The (op, dtype[, format]) entries implemented. Calls outside them fail with
    /// [`crate::Error::Unsupported`]; so may parameter combinations a vendor op cannot do
    /// (listed in `notes`).
    pub supported: Vec<OpSupport>,
    /// How the backend has been verified.
    pub verification: Verification,
    /// Further facts: API version, relevant extensions, contract gaps.
    pub notes: Vec<String>,
}

impl BackendInfo {
    /// Whether `op` is implemented for run dtype `dtype` (its plain form).
    pub fn supports(&self, op: Op, dtype: DType) -> bool {
        self.supported.contains(&OpSupport::new(op, dtype))
    }

    /// Whether variant `format` of `op` is implemented for run dtype `dtype`.
    pub fn supports_format(&self, op: Op, dtype: DType, format: Format) -> bool {
        self.supported
            .contains(&OpSupport::with_format(op, dtype, format))
    }
}
