/*
 * moemla_plugin.h - the moemla C plugin ABI, version 1.0.
 *
 * A plugin is a shared library (.so / .dylib / .dll) that implements moemla's v1 ops
 * (moe_route, moe_experts, mla_decode; semantics in docs/ops.md) for one device family,
 * written in any language that can export a C function. moemla loads it at run time
 * (`moemla conformance --plugin ./libmy.so`, or env MOEMLA_PLUGIN_PATH=a.so:b.so) and
 * shows it beside its built-in backends. examples/plugin-c/ is a complete plugin to copy.
 *
 * THE ENTRY POINT. The library exports exactly one symbol moemla looks up:
 *
 *     const MoemlaPluginApi* moemla_plugin_get_api(void);
 *
 * It returns a table of function pointers that stays valid, unchanged, until the library
 * is unloaded (a `static const` table is the usual way). It must not fail, block or
 * allocate; returning NULL makes the plugin unavailable.
 *
 * VERSIONING. `abi_version_major` changes only when an existing field changes meaning or
 * place; moemla refuses a plugin whose major differs from its own (the plugin is listed
 * as unavailable with the reason). `abi_version_minor` grows when fields are appended:
 * a plugin built against a newer minor works with an older moemla and the other way
 * round. That works because every struct that crosses the boundary (the table and every
 * args struct) begins with `size_t struct_size`, and fields are only ever appended:
 *   - The side that fills a struct's inputs sets `struct_size` to MOEMLA_STRUCT_SIZE of
 *     the struct as it was compiled (the end of its last field, so tail padding never
 *     looks like a field). moemla sets it on every args struct; the plugin sets it on its
 *     table.
 *   - The reader uses only the fields that lie entirely within `struct_size`
 *     (MOEMLA_STRUCT_HAS) and treats the others as absent (their documented default).
 *   - moemla zero-fills every args struct before a call, so an output field the plugin
 *     does not know about stays 0 / NULL, which always means "not provided".
 * The first three fields of MoemlaPluginApi (struct_size, abi_version_major,
 * abi_version_minor) never move, in any major version.
 *
 * ERRORS. Every fallible function returns `MoemlaError*`: NULL on success, otherwise an
 * error object the plugin allocated. moemla reads it with `error_get` and releases it with
 * exactly one `error_free`; the strings `error_get` hands out are owned by the error and
 * stay valid until that `error_free` (moemla copies them before freeing). A plugin that
 * cannot allocate an error may return a statically allocated one (e.g. "out of memory")
 * and must then make `error_free` ignore it.
 *
 * OWNERSHIP.
 *   - Host memory passed in (`host_data`, every `const char*` moemla passes) is owned by
 *     moemla and valid only for the duration of the call: copy what you keep.
 *   - Device memory is the plugin's. moemla never dereferences a MoemlaBuffer* or a
 *     MoemlaDevice*: they are opaque handles. A buffer is created by `buffer_alloc` or
 *     `buffer_from_host`, passed back to ops, and released by exactly one `buffer_free`.
 *     Op outputs are buffers moemla allocated with `buffer_alloc` for that call; the op
 *     writes every element of them.
 *   - Strings and arrays the plugin hands out: `plugin_info`'s stay valid until the
 *     library is unloaded; `device_info`'s until `device_close` of that device.
 *   - moemla closes a device only after every buffer of it has been freed and no call on
 *     it is in flight, and unloads the library only after every device is closed.
 *
 * THREADS. moemla's backends are shared between threads: every function may be called
 * concurrently from several threads, on the same device, with distinct output buffers
 * (inputs may be shared between concurrent calls and are only read). A plugin whose
 * runtime is not thread-safe serializes internally (one mutex per device is enough).
 * Errors are returned per call, never through a global "last error".
 *
 * VALIDATION. moemla's core checks every shape, dtype and parameter of an op against the
 * contract before the plugin is called, checks that every buffer passed has exactly the
 * byte size its tensor needs (buffers are created with the sizes moemla asked for) and
 * that the (op, run dtype) pair is one the device listed in `device_info`. The plugin may
 * rely on all of that. What it must check itself is the CONTENT of index tensors, which
 * live in device memory: expert ids, block-table entries and sequence lengths (see each
 * op below). A bad index is reported as MOEMLA_ERROR_INDEX_OUT_OF_RANGE naming the
 * argument, the row-major linear position of the first bad element and its value, and
 * nothing may be read out of bounds. moemla turns it into the contract's typed error
 * (moemla_core::Error::IndexOutOfRange) with the position per dimension and the valid
 * range. After an error the device stays usable.
 *
 * DATA. Tensors are contiguous, row-major, little-endian. F16 is IEEE binary16, BF16 the
 * upper 16 bits of an IEEE binary32; every op computes in f32 whatever the storage dtype.
 * NaN and infinity in float data are values, never errors (docs/ops.md says what they do).
 */

#ifndef MOEMLA_PLUGIN_H
#define MOEMLA_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------- */
/* Version, entry point, struct-size helpers                                            */
/* ---------------------------------------------------------------------------------- */

/** The ABI major version this header describes. */
#define MOEMLA_PLUGIN_ABI_MAJOR 1
/** The ABI minor version this header describes. */
#define MOEMLA_PLUGIN_ABI_MINOR 0

/** The name of the one symbol moemla looks up in a plugin library. */
#define MOEMLA_PLUGIN_ENTRY_POINT "moemla_plugin_get_api"

/** Marks the entry point as exported from the shared library. */
#if defined(_WIN32)
#define MOEMLA_PLUGIN_EXPORT __declspec(dllexport)
#elif defined(__GNUC__)
#define MOEMLA_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define MOEMLA_PLUGIN_EXPORT
#endif

/** The `struct_size` of `type` up to and including `last_field` (no tail padding). */
#define MOEMLA_STRUCT_SIZE(type, last_field) \
    (offsetof(type, last_field) + sizeof(((type*)0)->last_field))

/** Whether the struct `ptr` points to (of type `type`) contains `field` entirely. */
#define MOEMLA_STRUCT_HAS(type, ptr, field) \
    ((ptr)->struct_size >= MOEMLA_STRUCT_SIZE(type, field))

/* ---------------------------------------------------------------------------------- */
/* Enumerations (int32_t on the wire; 0 is never a valid dtype or op)                   */
/* ---------------------------------------------------------------------------------- */

/** Element types. */
typedef int32_t MoemlaDType;
#define MOEMLA_DTYPE_F32 1  /**< IEEE binary32 */
#define MOEMLA_DTYPE_F16 2  /**< IEEE binary16 */
#define MOEMLA_DTYPE_BF16 3 /**< bfloat16 (upper half of a binary32) */
#define MOEMLA_DTYPE_I32 4  /**< signed 32-bit integer (ids, block tables, lengths) */
/** FP8 e4m3fn bytes: no v1 op reads it, but buffer calls may carry it (moemla tensors of
 * any dtype can be uploaded). */
#define MOEMLA_DTYPE_F8E4M3 5
/** Unsigned bytes (packed rows such as the 656-byte FP8 latent cache of contract v2): no
 * op of this ABI reads it, but buffer calls may carry it. */
#define MOEMLA_DTYPE_U8 6

/** The ops of contract v1. */
typedef int32_t MoemlaOp;
#define MOEMLA_OP_MOE_ROUTE 1
#define MOEMLA_OP_MOE_EXPERTS 2
#define MOEMLA_OP_MLA_DECODE 3

/** Error codes (MoemlaErrorInfo.code). Unknown codes are reported as device errors. */
typedef int32_t MoemlaErrorCode;
/** An args struct broke this header's rules (too small, NULL handle): a bug on one side. */
#define MOEMLA_ERROR_INVALID_ARGUMENT 1
/** An index tensor holds a value outside its valid range (see MoemlaErrorInfo). */
#define MOEMLA_ERROR_INDEX_OUT_OF_RANGE 2
/** This op cannot do these parameters (or dtype) on this device; the message says why. */
#define MOEMLA_ERROR_UNSUPPORTED 3
/** Device or host memory could not be allocated. */
#define MOEMLA_ERROR_OUT_OF_MEMORY 4
/** `device_open` only: no driver, no device, or an incompatible runtime; says which. */
#define MOEMLA_ERROR_UNAVAILABLE 5
/** A driver or runtime call failed; the message names it and its status. */
#define MOEMLA_ERROR_DEVICE 6

/** How the plugin's maker says its results have been checked. moemla shows it marked
 * as the plugin's own claim. 0 is the default: claim nothing. */
typedef int32_t MoemlaVerificationKind;
/** Runs, but the golden set has not been checked on this device yet. */
#define MOEMLA_VERIFICATION_UNVERIFIED 0
/** `moemla conformance` passed on real hardware (say which, and when, in the detail). */
#define MOEMLA_VERIFICATION_SILICON 1
/** `moemla conformance` passed against an emulator of the vendor API. */
#define MOEMLA_VERIFICATION_EMULATOR 2
/** Kernels compile for the target; never run on it. */
#define MOEMLA_VERIFICATION_COMPILE_ONLY 3

/** What kind of device the plugin drives (shown by `moemla devices`; moemla prefers
 * accelerators, then CPUs, then emulators when it picks a backend itself). */
typedef int32_t MoemlaDeviceType;
/** Another accelerator (FPGA, DSP, ...). */
#define MOEMLA_DEVICE_TYPE_OTHER 0
/** The host CPU. */
#define MOEMLA_DEVICE_TYPE_CPU 1
#define MOEMLA_DEVICE_TYPE_GPU 2
/** NPU or other AI accelerator. */
#define MOEMLA_DEVICE_TYPE_NPU 3
/** Software emulating an accelerator's API on the host. */
#define MOEMLA_DEVICE_TYPE_EMULATOR 4

/** moe_route score functions. */
#define MOEMLA_SCORE_FUNC_SIGMOID 1
#define MOEMLA_SCORE_FUNC_SOFTMAX 2

/** moe_route group scores. */
#define MOEMLA_GROUP_SELECT_MAX 1
#define MOEMLA_GROUP_SELECT_TOP2_SUM 2

/* ---------------------------------------------------------------------------------- */
/* Opaque handles (defined by the plugin, never dereferenced by moemla)                 */
/* ---------------------------------------------------------------------------------- */

/** An error the plugin allocated; released by `error_free`. */
typedef struct MoemlaError MoemlaError;
/** An opened device (context, queue, ...); released by `device_close`. */
typedef struct MoemlaDevice MoemlaDevice;
/** One allocation in device memory; released by `buffer_free`. */
typedef struct MoemlaBuffer MoemlaBuffer;

/* ---------------------------------------------------------------------------------- */
/* Errors                                                                               */
/* ---------------------------------------------------------------------------------- */

/** Filled by `error_get`. moemla sets `struct_size`; the plugin writes the rest. */
typedef struct MoemlaErrorInfo {
    size_t struct_size;
    /** One of MOEMLA_ERROR_*. */
    MoemlaErrorCode code;
    /** NUL-terminated UTF-8, owned by the error, valid until `error_free`. Say what failed
     * and why (the vendor call and its status for MOEMLA_ERROR_DEVICE). */
    const char* message;
    /** MOEMLA_ERROR_INDEX_OUT_OF_RANGE only: the argument's name exactly as in this header
     * ("topk_ids", "block_table" or "cache_seqlens"), owned like `message`. */
    const char* index_arg;
    /** MOEMLA_ERROR_INDEX_OUT_OF_RANGE only: the row-major linear position of the first
     * bad element in that tensor (the order each op's section gives). */
    size_t index_position;
    /** MOEMLA_ERROR_INDEX_OUT_OF_RANGE only: the bad element's value. */
    int64_t index_value;
} MoemlaErrorInfo;

/* ---------------------------------------------------------------------------------- */
/* Plugin and device information                                                        */
/* ---------------------------------------------------------------------------------- */

/** `plugin_info`: facts known without opening a device. Strings: static (valid until the
 * library is unloaded). */
typedef struct MoemlaPluginInfoArgs {
    size_t struct_size;
    /** Out: the backend's name, as `--backend NAME` selects it and `moemla devices` lists
     * it: 1 to 64 characters from [A-Za-z0-9_.-]. */
    const char* name;
    /** Out: vendor or software stack ("Acme", "Acme SDK 3.1"). */
    const char* vendor;
    /** Out: MOEMLA_VERIFICATION_*. */
    MoemlaVerificationKind verification_kind;
    /** Out: the evidence: which device, which moemla version and date, where the
     * conformance report is published. May be NULL. */
    const char* verification_detail;
} MoemlaPluginInfoArgs;

/** `device_open`. */
typedef struct MoemlaDeviceOpenArgs {
    size_t struct_size;
    /** Out: the opened device. */
    MoemlaDevice* device;
} MoemlaDeviceOpenArgs;

/** `device_close`. */
typedef struct MoemlaDeviceCloseArgs {
    size_t struct_size;
    /** The device to close. */
    MoemlaDevice* device;
} MoemlaDeviceCloseArgs;

/** One (op, run dtype) pair a device implements. Frozen: this struct never grows. The run
 * dtype is that of `logits` (moe_route), `x` (moe_experts) or `q` (mla_decode). */
typedef struct MoemlaOpSupport {
    MoemlaOp op;
    MoemlaDType dtype;
} MoemlaOpSupport;

/** `device_info`: facts about an opened device. Strings and arrays: valid until
 * `device_close`. */
typedef struct MoemlaDeviceInfoArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** Out: the device's name as its driver reports it. */
    const char* device_name;
    /** Out: MOEMLA_DEVICE_TYPE_*. */
    MoemlaDeviceType device_type;
    /** Out: device memory in bytes, 0 if unknown. */
    uint64_t memory_bytes;
    /** Out: the (op, run dtype) pairs implemented, each at most once. moemla answers
     * every other call with Error::Unsupported without calling the plugin. */
    const MoemlaOpSupport* supported;
    /** Out: the number of entries of `supported`. */
    size_t num_supported;
    /** Out: further facts (runtime version, parameter combinations an op cannot do). */
    const char* const* notes;
    /** Out: the number of entries of `notes`. */
    size_t num_notes;
} MoemlaDeviceInfoArgs;

/* ---------------------------------------------------------------------------------- */
/* Buffers                                                                              */
/* ---------------------------------------------------------------------------------- */

/** `buffer_alloc`. */
typedef struct MoemlaBufferAllocArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** In: bytes to allocate; may be 0 (the handle must still be valid and freeable). */
    size_t size_in_bytes;
    /** In: the element type moemla will keep in it (informational). */
    MoemlaDType dtype;
    /** In: 1: every byte must read as 0; 0: contents unspecified (an op output, which the
     * op writes completely). */
    int32_t zero_fill;
    /** Out: the new buffer. */
    MoemlaBuffer* buffer;
} MoemlaBufferAllocArgs;

/** `buffer_from_host`: a new buffer holding a copy of host memory. */
typedef struct MoemlaBufferFromHostArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** In: `size_in_bytes` bytes, owned by moemla, valid only during the call: the copy
     * must have read them all before the function returns. NULL when the size is 0. */
    const void* host_data;
    /** In: bytes to copy. */
    size_t size_in_bytes;
    /** In: the element type of the data (informational). */
    MoemlaDType dtype;
    /** Out: the new buffer. */
    MoemlaBuffer* buffer;
} MoemlaBufferFromHostArgs;

/** `buffer_to_host`: copies a whole buffer to host memory, after all work already
 * submitted that writes it has finished. */
typedef struct MoemlaBufferToHostArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** In: the buffer to read. */
    const MoemlaBuffer* buffer;
    /** In: destination, owned by moemla, `size_in_bytes` bytes. NULL when the size is 0. */
    void* host_data;
    /** In: the buffer's size (exactly what it was created with). */
    size_t size_in_bytes;
} MoemlaBufferToHostArgs;

/** `buffer_free`. */
typedef struct MoemlaBufferFreeArgs {
    size_t struct_size;
    /** In: the device the buffer was created on. */
    MoemlaDevice* device;
    /** In: the buffer; never used again by moemla. */
    MoemlaBuffer* buffer;
} MoemlaBufferFreeArgs;

/** `synchronize`: returns when all work submitted to the device has finished. */
typedef struct MoemlaSynchronizeArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
} MoemlaSynchronizeArgs;

/* ---------------------------------------------------------------------------------- */
/* Ops. Every input is validated by moemla (shapes, dtypes, parameters, buffer sizes); */
/* sizes are given by name, in the contract's layouts. Outputs were allocated by moemla */
/* for this call with `buffer_alloc` (zero_fill 0) and never alias an input.            */
/* ---------------------------------------------------------------------------------- */

/**
 * `moe_route`: DeepSeek-V2/V3 gating, computed in f32 whatever the logits dtype.
 *   s = sigmoid(logits) or softmax(logits) over each row's E experts.
 *   sel = s + bias (bias only for selection; no bias: sel = s).
 *   n_group > 1: the E experts form n_group consecutive groups; a group's score is its
 *   best sel (MAX) or the sum of its best two (TOP2_SUM; a one-expert group: that one);
 *   the topk_group best groups are kept and sel of every other expert becomes -inf.
 *   ids = the top_k experts by sel, descending; ties keep the lower index first; a NaN
 *   sel ranks as -inf everywhere (group scores and experts), so it is picked only when
 *   nothing else is left.
 *   weights = s[ids] (unbiased scores); renormalize: weights /= max(sum(weights), 1e-20)
 *   (f32); then weights *= routed_scaling_factor.
 * No index inputs: never returns MOEMLA_ERROR_INDEX_OUT_OF_RANGE.
 */
typedef struct MoemlaMoeRouteArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** In: router logits [T, E] of `logits_dtype` (F32, F16 or BF16). */
    const MoemlaBuffer* logits;
    /** In: the dtype of `logits` (the run dtype). */
    MoemlaDType logits_dtype;
    /** In: selection bias [E] F32, or NULL for none. */
    const MoemlaBuffer* bias;
    /** In: T (>= 1). */
    size_t tokens;
    /** In: E (>= 1). */
    size_t experts;
    /** In: MOEMLA_SCORE_FUNC_*. */
    int32_t score_func;
    /** In: MOEMLA_GROUP_SELECT_*. */
    int32_t group_select;
    /** In: experts per token, 1 <= top_k <= topk_group * E / n_group. */
    size_t top_k;
    /** In: groups, a divisor of E (1 = no group limit). */
    size_t n_group;
    /** In: groups kept, 1 <= topk_group <= n_group. */
    size_t topk_group;
    /** In: 1: divide the weights by their sum as above; 0: do not. */
    int32_t renormalize;
    /** In: final multiplier of the weights (finite). */
    float routed_scaling_factor;
    /** Out: topk_ids [T, top_k] I32. */
    MoemlaBuffer* topk_ids;
    /** Out: topk_weights [T, top_k] F32. */
    MoemlaBuffer* topk_weights;
} MoemlaMoeRouteArgs;

/**
 * `moe_experts`: fused routed-expert SwiGLU FFN with weighted combine, f32 math.
 *   y[t] = sum over slots j of w[t,j] * W2[e] @ (silu(W1[e] @ x[t]) * (W3[e] @ x[t])),
 *   e = topk_ids[t,j], w = topk_weights; W1 = rows 0..I of w13[e], W3 = rows I..2I.
 *   A slot whose id is -1 or whose weight is 0 (+0 or -0) contributes nothing, even when
 *   that expert's output would be NaN or infinite (skip it; never compute 0 * NaN).
 *   y is written in the run dtype (rounded to nearest even from f32).
 * Index check, before anything is read through an id: every topk_ids element must lie in
 * [-1, E); else MOEMLA_ERROR_INDEX_OUT_OF_RANGE, index_arg "topk_ids", the first bad
 * element in row-major order.
 */
typedef struct MoemlaMoeExpertsArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** In: the run dtype of x, w13, w2 and y (F32, F16 or BF16). */
    MoemlaDType dtype;
    /** In: tokens x [T, H]. */
    const MoemlaBuffer* x;
    /** In: gate and up projections w13 [E, 2I, H]. */
    const MoemlaBuffer* w13;
    /** In: down projections w2 [E, H, I]. */
    const MoemlaBuffer* w2;
    /** In: topk_ids [T, k] I32, contents unchecked (see above). */
    const MoemlaBuffer* topk_ids;
    /** In: topk_weights [T, k] F32. */
    const MoemlaBuffer* topk_weights;
    /** In: T (>= 1). */
    size_t tokens;
    /** In: H (>= 1). */
    size_t hidden;
    /** In: I (>= 1). */
    size_t inter;
    /** In: E (>= 1). */
    size_t experts;
    /** In: k (>= 1). */
    size_t top_k;
    /** Out: y [T, H] in the run dtype. */
    MoemlaBuffer* y;
} MoemlaMoeExpertsArgs;

/**
 * `mla_decode`: absorbed MLA attention over a paged latent cache (FlashMLA semantics).
 *   Token p of sequence b lives at kv_cache[block_table[b, p / block_size],
 *   p % block_size]; K = the whole row (Dqk), V = its first Dv columns.
 *   Query i of Sq attends to positions [0, L): L = seqlen (causal 0) or
 *   L = seqlen - Sq + i + 1 (causal 1, bottom-right aligned). Head h uses kv head
 *   h / (Hq / Hkv).
 *   o = softmax(softmax_scale * q.K^T) @ V; lse = ln(sum exp(softmax_scale * q.K^T))
 *   (natural log, f32). Empty range (L <= 0): o = 0, lse = -inf.
 *   Cache rows no sequence uses may hold NaN: never let them into a result.
 *   o is written in the run dtype; lse in F32.
 * Index checks, before the cache is read: first every cache_seqlens element must lie in
 * [0, max_blocks * block_size] (else index_arg "cache_seqlens", position b); then, for
 * each row b in order, the block_table entries that cover positions below its length
 * (columns 0 .. ceil(seqlen / block_size) - 1) must lie in [0, num_blocks) (else
 * index_arg "block_table", position b * max_blocks + column, the first bad one in
 * row-major order). Entries past a row's length may hold anything and are never read.
 */
typedef struct MoemlaMlaDecodeArgs {
    size_t struct_size;
    /** In: the device. */
    MoemlaDevice* device;
    /** In: the run dtype of q, kv_cache and o (F32, F16 or BF16). */
    MoemlaDType dtype;
    /** In: queries q [B, Sq, Hq, Dqk]. */
    const MoemlaBuffer* q;
    /** In: paged cache kv_cache [num_blocks, block_size, Hkv, Dqk]. */
    const MoemlaBuffer* kv_cache;
    /** In: block_table [B, max_blocks] I32, contents unchecked (see above). */
    const MoemlaBuffer* block_table;
    /** In: cache_seqlens [B] I32, contents unchecked (see above). */
    const MoemlaBuffer* cache_seqlens;
    /** In: B (>= 1). */
    size_t batch;
    /** In: Sq (>= 1). */
    size_t s_q;
    /** In: Hq (>= 1, a multiple of Hkv). */
    size_t h_q;
    /** In: Hkv (>= 1). */
    size_t h_kv;
    /** In: Dqk (>= Dv). */
    size_t d_qk;
    /** In: Dv (>= 1). */
    size_t d_v;
    /** In: blocks in the cache (>= 1). */
    size_t num_blocks;
    /** In: tokens per block (>= 1). */
    size_t block_size;
    /** In: columns of the block table (>= 1). */
    size_t max_blocks;
    /** In: multiplier of q.k, finite and > 0. */
    float softmax_scale;
    /** In: 1: causal mask as above; 0: none. */
    int32_t causal;
    /** Out: o [B, Sq, Hq, Dv] in the run dtype. */
    MoemlaBuffer* o;
    /** Out: lse [B, Hq, Sq] F32. */
    MoemlaBuffer* lse;
} MoemlaMlaDecodeArgs;

/* ---------------------------------------------------------------------------------- */
/* The function table                                                                   */
/* ---------------------------------------------------------------------------------- */

/** What `moemla_plugin_get_api` returns. Every function pointer of ABI 1.0 is required
 * (non-NULL). Set `struct_size` to MOEMLA_PLUGIN_API_STRUCT_SIZE. */
typedef struct MoemlaPluginApi {
    /** MOEMLA_STRUCT_SIZE of the table as the plugin was compiled. Never moves. */
    size_t struct_size;
    /** MOEMLA_PLUGIN_ABI_MAJOR as the plugin was compiled. Never moves. */
    uint32_t abi_version_major;
    /** MOEMLA_PLUGIN_ABI_MINOR as the plugin was compiled. Never moves. */
    uint32_t abi_version_minor;

    /** Fills `info` (only the fields within info->struct_size) from `error`. Never fails. */
    void (*error_get)(const MoemlaError* error, MoemlaErrorInfo* info);
    /** Releases `error` and the strings it owns. Called exactly once per error. */
    void (*error_free)(MoemlaError* error);

    /** Name, vendor and claimed verification; callable before any device is opened. */
    MoemlaError* (*plugin_info)(MoemlaPluginInfoArgs* args);

    /** Opens the plugin's device: MOEMLA_ERROR_UNAVAILABLE with the reason when there is
     * none (no driver, no device). May be called more than once; each device is
     * independent and closed by its own `device_close`. */
    MoemlaError* (*device_open)(MoemlaDeviceOpenArgs* args);
    /** Closes a device (all its buffers are already freed). Never fails. */
    void (*device_close)(MoemlaDeviceCloseArgs* args);
    /** Device name, type, memory, supported (op, dtype) pairs, notes. */
    MoemlaError* (*device_info)(MoemlaDeviceInfoArgs* args);

    /** Allocates a buffer (zero-filled on request). */
    MoemlaError* (*buffer_alloc)(MoemlaBufferAllocArgs* args);
    /** Allocates a buffer holding a copy of host memory. */
    MoemlaError* (*buffer_from_host)(MoemlaBufferFromHostArgs* args);
    /** Copies a whole buffer to host memory (waiting for work that writes it). */
    MoemlaError* (*buffer_to_host)(MoemlaBufferToHostArgs* args);
    /** Releases a buffer. Never fails. */
    void (*buffer_free)(MoemlaBufferFreeArgs* args);
    /** Waits for all submitted work on the device. */
    MoemlaError* (*synchronize)(MoemlaSynchronizeArgs* args);

    /** The v1 ops (see their args structs). */
    MoemlaError* (*moe_route)(MoemlaMoeRouteArgs* args);
    MoemlaError* (*moe_experts)(MoemlaMoeExpertsArgs* args);
    MoemlaError* (*mla_decode)(MoemlaMlaDecodeArgs* args);
} MoemlaPluginApi;

/** `struct_size` of the ABI 1.0 table. */
#define MOEMLA_PLUGIN_API_STRUCT_SIZE MOEMLA_STRUCT_SIZE(MoemlaPluginApi, mla_decode)

/** The entry point every plugin exports (see the top of this file). */
typedef const MoemlaPluginApi* (*MoemlaPluginGetApiFn)(void);
MOEMLA_PLUGIN_EXPORT const MoemlaPluginApi* moemla_plugin_get_api(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOEMLA_PLUGIN_H */
