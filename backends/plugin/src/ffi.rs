//! The Rust mirror of `include/moemla_plugin.h` (ABI 1.0): the same constants, the same
//! `#[repr(C)]` structs in the same field order, and the function table. The header is the
//! specification and documents every field; this module only restates it so the loader
//! (or a plugin written in Rust) can use it. `tests/abi_layout.rs` compiles the header and
//! checks that every offset and size here matches the C compiler's.

use std::ffi::{c_char, c_void};

/// The ABI major version this loader implements (`MOEMLA_PLUGIN_ABI_MAJOR`).
pub const ABI_MAJOR: u32 = 1;
/// The ABI minor version this loader implements (`MOEMLA_PLUGIN_ABI_MINOR`).
pub const ABI_MINOR: u32 = 0;
/// The one symbol looked up in a plugin (`MOEMLA_PLUGIN_ENTRY_POINT`).
pub const ENTRY_POINT: &str = "moemla_plugin_get_api";

/// `MOEMLA_DTYPE_F32`.
pub const DTYPE_F32: i32 = 1;
/// `MOEMLA_DTYPE_F16`.
pub const DTYPE_F16: i32 = 2;
/// `MOEMLA_DTYPE_BF16`.
pub const DTYPE_BF16: i32 = 3;
/// `MOEMLA_DTYPE_I32`.
pub const DTYPE_I32: i32 = 4;
/// `MOEMLA_DTYPE_F8E4M3` (buffer calls only; no v1 op reads it).
pub const DTYPE_F8E4M3: i32 = 5;
/// `MOEMLA_DTYPE_U8` (buffer calls only; no op of the plugin ABI reads it).
pub const DTYPE_U8: i32 = 6;

/// `MOEMLA_OP_MOE_ROUTE`.
pub const OP_MOE_ROUTE: i32 = 1;
/// `MOEMLA_OP_MOE_EXPERTS`.
pub const OP_MOE_EXPERTS: i32 = 2;
/// `MOEMLA_OP_MLA_DECODE`.
pub const OP_MLA_DECODE: i32 = 3;

/// `MOEMLA_ERROR_INVALID_ARGUMENT`.
pub const ERROR_INVALID_ARGUMENT: i32 = 1;
/// `MOEMLA_ERROR_INDEX_OUT_OF_RANGE`.
pub const ERROR_INDEX_OUT_OF_RANGE: i32 = 2;
/// `MOEMLA_ERROR_UNSUPPORTED`.
pub const ERROR_UNSUPPORTED: i32 = 3;
/// `MOEMLA_ERROR_OUT_OF_MEMORY`.
pub const ERROR_OUT_OF_MEMORY: i32 = 4;
/// `MOEMLA_ERROR_UNAVAILABLE`.
pub const ERROR_UNAVAILABLE: i32 = 5;
/// `MOEMLA_ERROR_DEVICE`.
pub const ERROR_DEVICE: i32 = 6;

/// `MOEMLA_VERIFICATION_UNVERIFIED`.
pub const VERIFICATION_UNVERIFIED: i32 = 0;
/// `MOEMLA_VERIFICATION_SILICON`.
pub const VERIFICATION_SILICON: i32 = 1;
/// `MOEMLA_VERIFICATION_EMULATOR`.
pub const VERIFICATION_EMULATOR: i32 = 2;
/// `MOEMLA_VERIFICATION_COMPILE_ONLY`.
pub const VERIFICATION_COMPILE_ONLY: i32 = 3;

/// `MOEMLA_DEVICE_TYPE_OTHER`.
pub const DEVICE_TYPE_OTHER: i32 = 0;
/// `MOEMLA_DEVICE_TYPE_CPU`.
pub const DEVICE_TYPE_CPU: i32 = 1;
/// `MOEMLA_DEVICE_TYPE_GPU`.
pub const DEVICE_TYPE_GPU: i32 = 2;
/// `MOEMLA_DEVICE_TYPE_NPU`.
pub const DEVICE_TYPE_NPU: i32 = 3;
/// `MOEMLA_DEVICE_TYPE_EMULATOR`.
pub const DEVICE_TYPE_EMULATOR: i32 = 4;

/// `MOEMLA_SCORE_FUNC_SIGMOID`.
pub const SCORE_FUNC_SIGMOID: i32 = 1;
/// `MOEMLA_SCORE_FUNC_SOFTMAX`.
pub const SCORE_FUNC_SOFTMAX: i32 = 2;
/// `MOEMLA_GROUP_SELECT_MAX`.
pub const GROUP_SELECT_MAX: i32 = 1;
/// `MOEMLA_GROUP_SELECT_TOP2_SUM`.
pub const GROUP_SELECT_TOP2_SUM: i32 = 2;

/// Opaque `MoemlaError` (plugin-owned).
#[repr(C)]
pub struct MoemlaError {
    _opaque: [u8; 0],
}

/// Opaque `MoemlaDevice` (plugin-owned).
#[repr(C)]
pub struct MoemlaDevice {
    _opaque: [u8; 0],
}

/// Opaque `MoemlaBuffer` (plugin-owned device memory).
#[repr(C)]
pub struct MoemlaBuffer {
    _opaque: [u8; 0],
}

/// A struct that crosses the ABI and begins with `size_t struct_size`.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers, floats, raw pointers and
/// `Option<extern fn>`, for which all-zero bytes are a valid value, and set `STRUCT_SIZE`
/// to the end of the last field (`MOEMLA_STRUCT_SIZE`).
pub unsafe trait SizedStruct: Sized {
    /// `MOEMLA_STRUCT_SIZE(type, last_field)`: the end of the last field, no tail padding.
    const STRUCT_SIZE: usize;

    /// All fields zero except `struct_size`, which is [`SizedStruct::STRUCT_SIZE`]: what
    /// moemla passes before filling the inputs (so unknown outputs read as "absent").
    fn zeroed() -> Self {
        // SAFETY: the trait's contract: all-zero bytes are a valid value of Self.
        let mut value: Self = unsafe { std::mem::zeroed() };
        // SAFETY: every implementor begins with `struct_size: usize` (repr(C), offset 0).
        unsafe {
            (&mut value as *mut Self)
                .cast::<usize>()
                .write(Self::STRUCT_SIZE)
        };
        value
    }
}

/// Implements [`SizedStruct`] with the size ending at `$last` (of type `$ty`).
macro_rules! sized_struct {
    ($name:ident, $last:ident: $ty:ty) => {
        // SAFETY: $name is repr(C), starts with `struct_size`, and holds only integers,
        // floats, raw pointers and optional function pointers (all-zero is valid).
        unsafe impl SizedStruct for $name {
            const STRUCT_SIZE: usize =
                std::mem::offset_of!($name, $last) + std::mem::size_of::<$ty>();
        }
    };
}

/// `MoemlaErrorInfo`, filled by `error_get`.
#[repr(C)]
pub struct MoemlaErrorInfo {
    /// Set by moemla.
    pub struct_size: usize,
    /// `MOEMLA_ERROR_*`.
    pub code: i32,
    /// The message, owned by the error.
    pub message: *const c_char,
    /// Index errors: the argument's name.
    pub index_arg: *const c_char,
    /// Index errors: the row-major position of the first bad element.
    pub index_position: usize,
    /// Index errors: its value.
    pub index_value: i64,
}
sized_struct!(MoemlaErrorInfo, index_value: i64);

/// `MoemlaPluginInfoArgs`.
#[repr(C)]
pub struct MoemlaPluginInfoArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// Out: the backend name.
    pub name: *const c_char,
    /// Out: the vendor.
    pub vendor: *const c_char,
    /// Out: `MOEMLA_VERIFICATION_*`.
    pub verification_kind: i32,
    /// Out: the evidence (may be null).
    pub verification_detail: *const c_char,
}
sized_struct!(MoemlaPluginInfoArgs, verification_detail: *const c_char);

/// `MoemlaDeviceOpenArgs`.
#[repr(C)]
pub struct MoemlaDeviceOpenArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// Out: the opened device.
    pub device: *mut MoemlaDevice,
}
sized_struct!(MoemlaDeviceOpenArgs, device: *mut MoemlaDevice);

/// `MoemlaDeviceCloseArgs`.
#[repr(C)]
pub struct MoemlaDeviceCloseArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// The device to close.
    pub device: *mut MoemlaDevice,
}
sized_struct!(MoemlaDeviceCloseArgs, device: *mut MoemlaDevice);

/// `MoemlaOpSupport` (frozen: never grows).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MoemlaOpSupport {
    /// `MOEMLA_OP_*`.
    pub op: i32,
    /// `MOEMLA_DTYPE_*` (the run dtype).
    pub dtype: i32,
}

/// `MoemlaDeviceInfoArgs`.
#[repr(C)]
pub struct MoemlaDeviceInfoArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// Out: the device name.
    pub device_name: *const c_char,
    /// Out: `MOEMLA_DEVICE_TYPE_*`.
    pub device_type: i32,
    /// Out: device memory in bytes (0 = unknown).
    pub memory_bytes: u64,
    /// Out: the supported (op, dtype) pairs.
    pub supported: *const MoemlaOpSupport,
    /// Out: their number.
    pub num_supported: usize,
    /// Out: notes.
    pub notes: *const *const c_char,
    /// Out: their number.
    pub num_notes: usize,
}
sized_struct!(MoemlaDeviceInfoArgs, num_notes: usize);

/// `MoemlaBufferAllocArgs`.
#[repr(C)]
pub struct MoemlaBufferAllocArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: bytes.
    pub size_in_bytes: usize,
    /// In: the element type (informational).
    pub dtype: i32,
    /// In: 1 = zero-filled.
    pub zero_fill: i32,
    /// Out: the buffer.
    pub buffer: *mut MoemlaBuffer,
}
sized_struct!(MoemlaBufferAllocArgs, buffer: *mut MoemlaBuffer);

/// `MoemlaBufferFromHostArgs`.
#[repr(C)]
pub struct MoemlaBufferFromHostArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: the host bytes (valid during the call only).
    pub host_data: *const c_void,
    /// In: their number.
    pub size_in_bytes: usize,
    /// In: the element type (informational).
    pub dtype: i32,
    /// Out: the buffer.
    pub buffer: *mut MoemlaBuffer,
}
sized_struct!(MoemlaBufferFromHostArgs, buffer: *mut MoemlaBuffer);

/// `MoemlaBufferToHostArgs`.
#[repr(C)]
pub struct MoemlaBufferToHostArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: the buffer.
    pub buffer: *const MoemlaBuffer,
    /// In: the destination.
    pub host_data: *mut c_void,
    /// In: the buffer's size.
    pub size_in_bytes: usize,
}
sized_struct!(MoemlaBufferToHostArgs, size_in_bytes: usize);

/// `MoemlaBufferFreeArgs`.
#[repr(C)]
pub struct MoemlaBufferFreeArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: the buffer.
    pub buffer: *mut MoemlaBuffer,
}
sized_struct!(MoemlaBufferFreeArgs, buffer: *mut MoemlaBuffer);

/// `MoemlaSynchronizeArgs`.
#[repr(C)]
pub struct MoemlaSynchronizeArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
}
sized_struct!(MoemlaSynchronizeArgs, device: *mut MoemlaDevice);

/// `MoemlaMoeRouteArgs`.
#[repr(C)]
pub struct MoemlaMoeRouteArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: logits `[T, E]`.
    pub logits: *const MoemlaBuffer,
    /// In: their dtype.
    pub logits_dtype: i32,
    /// In: bias `[E]` F32, or null.
    pub bias: *const MoemlaBuffer,
    /// In: T.
    pub tokens: usize,
    /// In: E.
    pub experts: usize,
    /// In: `MOEMLA_SCORE_FUNC_*`.
    pub score_func: i32,
    /// In: `MOEMLA_GROUP_SELECT_*`.
    pub group_select: i32,
    /// In: top_k.
    pub top_k: usize,
    /// In: n_group.
    pub n_group: usize,
    /// In: topk_group.
    pub topk_group: usize,
    /// In: 1 = renormalize.
    pub renormalize: i32,
    /// In: routed_scaling_factor (f32).
    pub routed_scaling_factor: f32,
    /// Out: topk_ids `[T, top_k]` I32.
    pub topk_ids: *mut MoemlaBuffer,
    /// Out: topk_weights `[T, top_k]` F32.
    pub topk_weights: *mut MoemlaBuffer,
}
sized_struct!(MoemlaMoeRouteArgs, topk_weights: *mut MoemlaBuffer);

/// `MoemlaMoeExpertsArgs`.
#[repr(C)]
pub struct MoemlaMoeExpertsArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: the run dtype.
    pub dtype: i32,
    /// In: x [T, H].
    pub x: *const MoemlaBuffer,
    /// In: w13 [E, 2I, H].
    pub w13: *const MoemlaBuffer,
    /// In: w2 [E, H, I].
    pub w2: *const MoemlaBuffer,
    /// In: topk_ids [T, k] I32.
    pub topk_ids: *const MoemlaBuffer,
    /// In: topk_weights [T, k] F32.
    pub topk_weights: *const MoemlaBuffer,
    /// In: T.
    pub tokens: usize,
    /// In: H.
    pub hidden: usize,
    /// In: I.
    pub inter: usize,
    /// In: E.
    pub experts: usize,
    /// In: k.
    pub top_k: usize,
    /// Out: y [T, H].
    pub y: *mut MoemlaBuffer,
}
sized_struct!(MoemlaMoeExpertsArgs, y: *mut MoemlaBuffer);

/// `MoemlaMlaDecodeArgs`.
#[repr(C)]
pub struct MoemlaMlaDecodeArgs {
    /// Set by moemla.
    pub struct_size: usize,
    /// In: the device.
    pub device: *mut MoemlaDevice,
    /// In: the run dtype.
    pub dtype: i32,
    /// In: q `[B, Sq, Hq, Dqk]`.
    pub q: *const MoemlaBuffer,
    /// In: kv_cache `[num_blocks, block_size, Hkv, Dqk]`.
    pub kv_cache: *const MoemlaBuffer,
    /// In: block_table `[B, max_blocks]` I32.
    pub block_table: *const MoemlaBuffer,
    /// In: cache_seqlens `[B]` I32.
    pub cache_seqlens: *const MoemlaBuffer,
    /// In: B.
    pub batch: usize,
    /// In: Sq.
    pub s_q: usize,
    /// In: Hq.
    pub h_q: usize,
    /// In: Hkv.
    pub h_kv: usize,
    /// In: Dqk.
    pub d_qk: usize,
    /// In: Dv.
    pub d_v: usize,
    /// In: blocks in the cache.
    pub num_blocks: usize,
    /// In: tokens per block.
    pub block_size: usize,
    /// In: columns of the block table.
    pub max_blocks: usize,
    /// In: softmax_scale (f32).
    pub softmax_scale: f32,
    /// In: 1 = causal.
    pub causal: i32,
    /// Out: o `[B, Sq, Hq, Dv]`.
    pub o: *mut MoemlaBuffer,
    /// Out: lse `[B, Hq, Sq]` F32.
    pub lse: *mut MoemlaBuffer,
}
sized_struct!(MoemlaMlaDecodeArgs, lse: *mut MoemlaBuffer);

/// A function that takes an args struct and returns an error or null.
pub type Call<A> = unsafe extern "C" fn(*mut A) -> *mut MoemlaError;
/// A function that takes an args struct and cannot fail.
pub type Release<A> = unsafe extern "C" fn(*mut A);

/// `MoemlaPluginApi`: the table `moemla_plugin_get_api` returns. Every function pointer is
/// optional here because a table from an older minor may end before it.
#[repr(C)]
pub struct MoemlaPluginApi {
    /// The table's `MOEMLA_STRUCT_SIZE` as the plugin was compiled.
    pub struct_size: usize,
    /// The plugin's ABI major.
    pub abi_version_major: u32,
    /// The plugin's ABI minor.
    pub abi_version_minor: u32,
    /// `error_get`.
    pub error_get: Option<unsafe extern "C" fn(*const MoemlaError, *mut MoemlaErrorInfo)>,
    /// `error_free`.
    pub error_free: Option<unsafe extern "C" fn(*mut MoemlaError)>,
    /// `plugin_info`.
    pub plugin_info: Option<Call<MoemlaPluginInfoArgs>>,
    /// `device_open`.
    pub device_open: Option<Call<MoemlaDeviceOpenArgs>>,
    /// `device_close`.
    pub device_close: Option<Release<MoemlaDeviceCloseArgs>>,
    /// `device_info`.
    pub device_info: Option<Call<MoemlaDeviceInfoArgs>>,
    /// `buffer_alloc`.
    pub buffer_alloc: Option<Call<MoemlaBufferAllocArgs>>,
    /// `buffer_from_host`.
    pub buffer_from_host: Option<Call<MoemlaBufferFromHostArgs>>,
    /// `buffer_to_host`.
    pub buffer_to_host: Option<Call<MoemlaBufferToHostArgs>>,
    /// `buffer_free`.
    pub buffer_free: Option<Release<MoemlaBufferFreeArgs>>,
    /// `synchronize`.
    pub synchronize: Option<Call<MoemlaSynchronizeArgs>>,
    /// `moe_route`.
    pub moe_route: Option<Call<MoemlaMoeRouteArgs>>,
    /// `moe_experts`.
    pub moe_experts: Option<Call<MoemlaMoeExpertsArgs>>,
    /// `mla_decode`.
    pub mla_decode: Option<Call<MoemlaMlaDecodeArgs>>,
}
sized_struct!(MoemlaPluginApi, mla_decode: Option<Call<MoemlaMlaDecodeArgs>>);

/// Bytes of the table's frozen head (`struct_size`, `abi_version_major`,
/// `abi_version_minor`): what a table of any major version holds.
pub const API_HEAD_SIZE: usize =
    std::mem::offset_of!(MoemlaPluginApi, abi_version_minor) + std::mem::size_of::<u32>();

/// The entry point's type: `const MoemlaPluginApi* moemla_plugin_get_api(void)`.
pub type GetApiFn = unsafe extern "C" fn() -> *const MoemlaPluginApi;
