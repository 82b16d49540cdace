// moemla_device.h — the portability layer shared by the CUDA and HIP kernels.
//
// Kernels include nothing else: no cuda_fp16.h / cuda_bf16.h / hip headers. Everything here
// uses compiler built-ins only, so NVRTC compiles the kernels with no include path and clang
// compiles them as HIP with a tiny shim (the backends prepend this file to each kernel
// source before handing it to the run-time compiler).
//
// Provides:
//   MOEMLA_CUDA / MOEMLA_HIP      which dialect is being compiled
//   MOEMLA_WARP_SIZE               lanes per warp (32) or wavefront (64 on gfx9 / DCU)
//   moemla_lane_mask_t            ballot mask type (uint32 on CUDA, uint64 on HIP)
//   moemla_shfl_xor/down, moemla_ballot, warp sum / max reductions
//   moemla_f16, moemla_bf16      16-bit storage types (a uint16 inside a struct), with
//                                 bit-exact conversions to f32 and round-to-nearest-even back
//   moemla_fp8                   e4m3fn storage, exact decode, RNE + saturating encode,
//                                 UE8M0 power-of-two rounding, the fnuz mapping
//   moemla_load / moemla_store   dtype-generic element access (f32 compute)
//   moemla_is_16bit<T>::value     true for moemla_f16 / moemla_bf16
//   MOEMLA_HAS_MMA_SYNC           1 where the mma.sync m16n8k16 tensor-core path is compiled
//   MOEMLA_HAS_MMA_FP8            1 where the mma.sync m16n8k32 e4m3 tensor-core path is
//                                 compiled (CUDA sm_89+): w8a8 GEMMs multiply FP8 codes
//   MOEMLA_DYN_SMEM(name)         the dynamic shared-memory buffer (16-byte aligned)
//   moemla_copy16 / moemla_zero16 16-byte vector moves
//   moemla_copy16_async           16-byte global -> shared copy, cp.async on CUDA sm_80+
//                                 (moemla_copy_async_wait completes them)
//   moemla_flag_index             records a bad index in a 64-bit error flag
//   moemla_block_topk             block-wide top-k by radix select (larger first, lower index
//                                 on ties, NaN as -inf)
//
// Shared logic never writes a literal lane count: use MOEMLA_WARP_SIZE.

#ifndef MOEMLA_DEVICE_H
#define MOEMLA_DEVICE_H

#if defined(__HIP__) || defined(__HIPCC__) || defined(__HIPCC_RTC__)
#define MOEMLA_HIP 1
#else
#define MOEMLA_CUDA 1
#endif

typedef unsigned short moemla_u16;
typedef unsigned int moemla_u32;
typedef int moemla_i32;
typedef unsigned long long moemla_u64;
typedef long long moemla_i64;

#define MOEMLA_INT_MAX 2147483647
#define MOEMLA_NEG_INF (moemla_bits_float(0xff800000u))

// ---------------------------------------------------------------------------------------
// Lanes, shuffles, ballots
// ---------------------------------------------------------------------------------------
#if defined(MOEMLA_CUDA)

#define MOEMLA_WARP_SIZE 32
typedef moemla_u32 moemla_lane_mask_t;
#define MOEMLA_FULL_MASK 0xffffffffu

__device__ __forceinline__ float moemla_shfl_xor(float v, int lane_mask) {
    return __shfl_xor_sync(MOEMLA_FULL_MASK, v, lane_mask);
}
__device__ __forceinline__ int moemla_shfl_xor(int v, int lane_mask) {
    return __shfl_xor_sync(MOEMLA_FULL_MASK, v, lane_mask);
}
__device__ __forceinline__ float moemla_shfl_down(float v, int delta) {
    return __shfl_down_sync(MOEMLA_FULL_MASK, v, delta);
}
__device__ __forceinline__ int moemla_shfl_down(int v, int delta) {
    return __shfl_down_sync(MOEMLA_FULL_MASK, v, delta);
}
__device__ __forceinline__ moemla_lane_mask_t moemla_ballot(int pred) {
    return __ballot_sync(MOEMLA_FULL_MASK, pred);
}
__device__ __forceinline__ moemla_u32 moemla_float_bits(float f) { return __float_as_uint(f); }
__device__ __forceinline__ float moemla_bits_float(moemla_u32 u) { return __uint_as_float(u); }

#define MOEMLA_ALIGN16 __align__(16)
#define MOEMLA_DYN_SMEM(name) extern __shared__ MOEMLA_ALIGN16 unsigned char name[]

// Tensor cores: mma.sync.aligned.m16n8k16 with f16/bf16 inputs exists from sm_80.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define MOEMLA_HAS_MMA_SYNC 1
#else
#define MOEMLA_HAS_MMA_SYNC 0
#endif
// FP8 tensor cores: mma.sync.aligned.m16n8k32 with e4m3 inputs and f32 accumulation exists
// from sm_89 (Ada; Hopper sm_90 too). Older archs dequantize FP8 codes into 16-bit tiles.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 890)
#define MOEMLA_HAS_MMA_FP8 1
#else
#define MOEMLA_HAS_MMA_FP8 0
#endif

#else  // MOEMLA_HIP

// __AMDGCN_WAVEFRONT_SIZE is predefined by clang for amdgcn device code (64 on gfx9,
// which covers MI300X gfx942, MI250 gfx90a and the Hygon DCU archs).
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define MOEMLA_WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define MOEMLA_WARP_SIZE 64
#endif
typedef moemla_u64 moemla_lane_mask_t;

__device__ __forceinline__ float moemla_shfl_xor(float v, int lane_mask) {
    return __shfl_xor(v, lane_mask, MOEMLA_WARP_SIZE);
}
__device__ __forceinline__ int moemla_shfl_xor(int v, int lane_mask) {
    return __shfl_xor(v, lane_mask, MOEMLA_WARP_SIZE);
}
__device__ __forceinline__ float moemla_shfl_down(float v, int delta) {
    return __shfl_down(v, delta, MOEMLA_WARP_SIZE);
}
__device__ __forceinline__ int moemla_shfl_down(int v, int delta) {
    return __shfl_down(v, delta, MOEMLA_WARP_SIZE);
}
__device__ __forceinline__ moemla_lane_mask_t moemla_ballot(int pred) {
    return (moemla_lane_mask_t)__ballot(pred);
}
__device__ __forceinline__ moemla_u32 moemla_float_bits(float f) {
    return __builtin_bit_cast(moemla_u32, f);
}
__device__ __forceinline__ float moemla_bits_float(moemla_u32 u) {
    return __builtin_bit_cast(float, u);
}

#define MOEMLA_ALIGN16 __attribute__((aligned(16)))
#ifndef MOEMLA_DYN_SMEM  // the host emulator provides its own
#define MOEMLA_DYN_SMEM(name) extern __shared__ MOEMLA_ALIGN16 unsigned char name[]
#endif

// The portable (CUDA-core style) paths are used on HIP. MFMA (v_mfma_f32_32x32x8bf16_1k /
// v_mfma_f32_16x16x16f16 on gfx90a/gfx942) would replace moemla_mma_16816 in the
// MOEMLA_HAS_MMA_SYNC blocks of moe_experts.cu and mla_decode.cu.
// MOEMLA_EMULATE_MMA (host emulation only, kernels/common/host_emulation) runs those blocks
// on an emulated moemla_mma_16816.
#if defined(MOEMLA_EMULATE_MMA)
#define MOEMLA_HAS_MMA_SYNC 1
#else
#define MOEMLA_HAS_MMA_SYNC 0
#endif
// HIP keeps the dequantize path for FP8 x FP8 (w8a8) too: gfx942's FP8 MFMA
// (v_mfma_f32_*_fp8_fp8) reads e4m3fnuz, not the OCP e4m3fn the contract stores, so using it
// needs every code mapped (moemla_e4m3fn_to_fnuz) and every scale doubled first — not done.
// MOEMLA_EMULATE_MMA_FP8 (host emulation only, with MOEMLA_EMULATE_MMA) compiles the kernels
// as CUDA sm_89+ does, on an emulated moemla_mma_16832_e4m3.
#if defined(MOEMLA_EMULATE_MMA_FP8)
#if !defined(MOEMLA_EMULATE_MMA)
#error "MOEMLA_EMULATE_MMA_FP8 needs MOEMLA_EMULATE_MMA (sm_89+ has both tensor-core paths)"
#endif
#define MOEMLA_HAS_MMA_FP8 1
#else
#define MOEMLA_HAS_MMA_FP8 0
#endif

#endif

// ---------------------------------------------------------------------------------------
// Warp reductions (every lane gets the result)
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ float moemla_warp_sum(float v) {
    for (int m = MOEMLA_WARP_SIZE / 2; m > 0; m >>= 1) v += moemla_shfl_xor(v, m);
    return v;
}

__device__ __forceinline__ float moemla_warp_max(float v) {
    for (int m = MOEMLA_WARP_SIZE / 2; m > 0; m >>= 1) v = fmaxf(v, moemla_shfl_xor(v, m));
    return v;
}

// ---------------------------------------------------------------------------------------
// 16-bit float storage and conversions (bit manipulation only)
// ---------------------------------------------------------------------------------------
struct moemla_f16 {
    moemla_u16 bits;
};
struct moemla_bf16 {
    moemla_u16 bits;
};

__device__ __forceinline__ float moemla_bf16_to_f32(moemla_u16 h) {
    return moemla_bits_float(((moemla_u32)h) << 16);
}

// Round to nearest even; NaN stays a (quiet) NaN with its sign; overflow rounds to inf.
__device__ __forceinline__ moemla_u16 moemla_f32_to_bf16(float f) {
    moemla_u32 u = moemla_float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (moemla_u16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (moemla_u16)(u >> 16);
}

__device__ __forceinline__ float moemla_f16_to_f32(moemla_u16 h) {
    moemla_u32 sign = ((moemla_u32)(h & 0x8000u)) << 16;
    moemla_u32 exp = (h >> 10) & 0x1fu;
    moemla_u32 mant = h & 0x3ffu;
    if (exp == 0u) {
        // Zero or subnormal: mant * 2^-24, exact in f32.
        float v = (float)mant * 5.9604644775390625e-8f;
        return moemla_bits_float(moemla_float_bits(v) | sign);
    }
    if (exp == 31u) return moemla_bits_float(sign | 0x7f800000u | (mant << 13));
    return moemla_bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round to nearest even, including into the subnormal range; NaN stays NaN.
__device__ __forceinline__ moemla_u16 moemla_f32_to_f16(float f) {
    moemla_u32 x = moemla_float_bits(f);
    moemla_u32 sign = (x >> 16) & 0x8000u;
    moemla_u32 ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (moemla_u16)(sign | 0x7e00u);  // NaN
    if (ax >= 0x477ff000u) return (moemla_u16)(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                                      // normal half (>= 2^-14)
        ax += 0x0fffu + ((ax >> 13) & 1u);
        return (moemla_u16)(sign | ((ax - 0x38000000u) >> 13));
    }
    // Subnormal half: value / 2^-24 = m * 2^(e - 126), m with its implicit bit.
    moemla_u32 e = ax >> 23;
    if (e < 102u) return (moemla_u16)sign;  // < 2^-25: rounds to zero
    moemla_u32 m = (ax & 0x7fffffu) | 0x800000u;
    moemla_u32 shift = 126u - e;  // 14..24
    moemla_u32 q = m >> shift;
    moemla_u32 rem = m & ((1u << shift) - 1u);
    moemla_u32 half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q += 1u;
    return (moemla_u16)(sign | q);
}

// ---------------------------------------------------------------------------------------
// FP8 e4m3fn (OCP; contract v2): bias 7, max 448, no inf, NaN 0x7F/0xFF, 0x80 = -0.0.
// Every e4m3 value is exact in f16, bf16 and f32, so a decoded code can be staged in the
// run dtype without rounding. The kernels decode in software, except the w8a8 GEMMs on
// CUDA sm_89+, which hand the e4m3fn codes as they are to NVIDIA's FP8 tensor cores (OCP
// e4m3 too); AMD's e4m3fnuz never occurs (see moemla_e4m3fn_to_fnuz).
// ---------------------------------------------------------------------------------------
struct moemla_fp8 {
    unsigned char bits;
};

// The exact value of a code.
__device__ __forceinline__ float moemla_e4m3_to_f32(moemla_u32 code) {
    const moemla_u32 sign = (code & 0x80u) << 24;
    const moemla_u32 exp = (code >> 3) & 0xfu;
    const moemla_u32 man = code & 0x7u;
    if (exp == 0xfu && man == 0x7u) return moemla_bits_float(sign | 0x7fc00000u);
    if (exp == 0u) {
        // Subnormal: man * 2^-9, exact in f32.
        return moemla_bits_float(moemla_float_bits((float)man * 0.001953125f) | sign);
    }
    return moemla_bits_float(sign | ((exp + 120u) << 23) | (man << 20));
}

// e4m3(v): round to nearest, ties to even, from the f32 value; magnitudes beyond 448 (and
// infinities) saturate to +-448; NaN gives 0x7F with v's sign; -0.0 gives 0x80.
__device__ __forceinline__ moemla_u32 moemla_f32_to_e4m3(float v) {
    const moemla_u32 bits = moemla_float_bits(v);
    const moemla_u32 sign = (bits >> 24) & 0x80u;
    const moemla_u32 ab = bits & 0x7fffffffu;
    if (ab > 0x7f800000u) return sign | 0x7fu;
    if (ab == 0x7f800000u) return sign | 0x7eu;
    const int biased = (int)(ab >> 23);
    if (biased == 0) return sign;
    const int e = biased - 127;
    // |v| = sig * 2^(e - 23); keep down to the e4m3 step of this binade (2^(e - 3) for
    // normals, 2^-9 below 2^-6); beyond 25 dropped bits everything rounds to 0.
    const moemla_u32 sig = (ab & 0x7fffffu) | 0x800000u;
    const int sh = e >= -6 ? 20 : (14 - e < 25 ? 14 - e : 25);
    const moemla_u32 kept = sig >> sh;
    const moemla_u32 rem = sig & ((1u << sh) - 1u);
    const moemla_u32 half = 1u << (sh - 1);
    const moemla_u32 q = kept + ((rem > half || (rem == half && (kept & 1u))) ? 1u : 0u);
    if (e < -6) return sign | q;  // subnormal; q == 8 is the smallest normal's code
    const int e2 = q == 16u ? e + 1 : e;
    const moemla_u32 man = q == 16u ? 0u : q - 8u;
    if (e2 > 8 || (e2 == 8 && man == 7u)) return sign | 0x7eu;
    return sign | ((moemla_u32)(e2 + 7) << 3) | man;
}

// 2^ceil(log2 s) exactly, from the bits of s >= 0 (UE8M0 scales): a power of two stays,
// anything else goes up; 0, inf and NaN are returned as they are.
__device__ __forceinline__ float moemla_pow2_ceil_f32(float s) {
    const moemla_u32 b = moemla_float_bits(s) & 0x7fffffffu;
    const moemla_u32 exp = b >> 23;
    const moemla_u32 man = b & 0x7fffffu;
    if (exp == 0xffu || b == 0u) return s;
    if (exp == 0u) {
        moemla_u32 p = 1u;
        while (p < man) p <<= 1;
        return moemla_bits_float(p);
    }
    return moemla_bits_float((exp + (man != 0u ? 1u : 0u)) << 23);
}

// The e4m3fnuz code (AMD gfx942's FP8: bias 8, max 240, 0x80 = NaN, no -0) holding half the
// value of e4m3fn code c: the same bits, except -0 (0x80) -> +0 and NaN -> 0x80. Data in
// fnuz thus needs its scales doubled. For a future MFMA-fp8 path; today's HIP kernels
// decode e4m3fn themselves.
__device__ __forceinline__ moemla_u32 moemla_e4m3fn_to_fnuz(moemla_u32 c) {
    if (c == 0x80u) return 0u;
    if ((c & 0x7fu) == 0x7fu) return 0x80u;
    return c;
}

// Whether T is one of the 16-bit storage types (the tensor-core operand types).
template <typename T>
struct moemla_is_16bit {
    static constexpr bool value = false;
};
template <>
struct moemla_is_16bit<moemla_f16> {
    static constexpr bool value = true;
};
template <>
struct moemla_is_16bit<moemla_bf16> {
    static constexpr bool value = true;
};

// Element access: every kernel computes in f32.
__device__ __forceinline__ float moemla_load(const float* p) { return *p; }
__device__ __forceinline__ float moemla_load(const moemla_f16* p) { return moemla_f16_to_f32(p->bits); }
__device__ __forceinline__ float moemla_load(const moemla_bf16* p) { return moemla_bf16_to_f32(p->bits); }
__device__ __forceinline__ void moemla_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void moemla_store(moemla_f16* p, float v) { p->bits = moemla_f32_to_f16(v); }
__device__ __forceinline__ void moemla_store(moemla_bf16* p, float v) { p->bits = moemla_f32_to_bf16(v); }
__device__ __forceinline__ float moemla_load(const moemla_fp8* p) { return moemla_e4m3_to_f32(p->bits); }
__device__ __forceinline__ void moemla_store(moemla_fp8* p, float v) { p->bits = (unsigned char)moemla_f32_to_e4m3(v); }

// Whether T is moemla_fp8.
template <typename T>
struct moemla_is_fp8 {
    static constexpr bool value = false;
};
template <>
struct moemla_is_fp8<moemla_fp8> {
    static constexpr bool value = true;
};

// 16 bytes moved as one vector access (both addresses must be 16-byte aligned).
struct MOEMLA_ALIGN16 moemla_vec16 {
    moemla_u32 x, y, z, w;
};
__device__ __forceinline__ void moemla_copy16(void* dst, const void* src) {
    *reinterpret_cast<moemla_vec16*>(dst) = *reinterpret_cast<const moemla_vec16*>(src);
}
// 16 bytes from global to shared memory, in flight until moemla_copy_async_wait(): on CUDA
// sm_80+ `cp.async.cg` (no register round trip, cached in L2 only), so a thread can have
// all of a tile's copies outstanding at once; a plain moemla_copy16 elsewhere. Both
// addresses 16-byte aligned; the data is visible to the block after the wait and a barrier.
#if defined(MOEMLA_CUDA) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
__device__ __forceinline__ void moemla_copy16_async(void* smem_dst, const void* gmem_src) {
    const moemla_u32 dst = (moemla_u32)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
}
// Waits for every moemla_copy16_async this thread issued.
__device__ __forceinline__ void moemla_copy_async_wait() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
#else
__device__ __forceinline__ void moemla_copy16_async(void* smem_dst, const void* gmem_src) {
    moemla_copy16(smem_dst, gmem_src);
}
// Waits for every moemla_copy16_async this thread issued (they completed as issued here).
__device__ __forceinline__ void moemla_copy_async_wait() {}
#endif
__device__ __forceinline__ void moemla_zero16(void* dst) {
    moemla_vec16 z;
    z.x = 0u;
    z.y = 0u;
    z.z = 0u;
    z.w = 0u;
    *reinterpret_cast<moemla_vec16*>(dst) = z;
}

// Error flags (kernels/README.md): one 64-bit word, all ones while clean. A bad index at
// row-major position `position` (< 2^31) holding `value` lowers the flag to
// (position << 32) | (u32)value, so the flag ends up naming the first bad position and the
// value found there; the host never reads the index tensor back.
__device__ __forceinline__ void moemla_flag_index(moemla_u64* flag, moemla_i64 position, int value) {
    atomicMin(flag, ((moemla_u64)position << 32) | (moemla_u64)(moemla_u32)value);
}

// ---------------------------------------------------------------------------------------
// Tensor cores (CUDA sm_80+): D = A(16x16, row) * B(16x8, col) + D, f32 accumulate.
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   d[0] = D[g][2t], d[1] = D[g][2t+1], d[2] = D[g+8][2t], d[3] = D[g+8][2t+1]
// The lower-indexed element of a pair sits in the low 16 bits of its register.
// ---------------------------------------------------------------------------------------
#if MOEMLA_HAS_MMA_SYNC && !defined(MOEMLA_EMULATE_MMA)
__device__ __forceinline__ void moemla_mma_16816(float* d, const moemla_u32* a, const moemla_u32* b,
                                                 moemla_bf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void moemla_mma_16816(float* d, const moemla_u32* a, const moemla_u32* b,
                                                 moemla_f16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ---------------------------------------------------------------------------------------
// FP8 tensor cores (CUDA sm_89+): D = A(16x32, row) * B(32x8, col) + D, e4m3 codes in,
// f32 accumulate. Fragment layout (PTX ISA, section "Matrix Fragments for mma.m16n8k32",
// the .e4m3 / .s8 tables), g = lane / 4, t = lane % 4, four codes per register, the
// lower-indexed element in the lowest byte:
//   a[0] = A[g][4t..4t+3],   a[1] = A[g+8][4t..4t+3],
//   a[2] = A[g][4t+16..+19], a[3] = A[g+8][4t+16..+19]
//   b[0] = B[4t..4t+3][g],   b[1] = B[4t+16..4t+19][g]
//   d as for m16n8k16: d[0] = D[g][2t], d[1] = D[g][2t+1], d[2] = D[g+8][2t], d[3] = D[g+8][2t+1]
// Every product of two e4m3 values is exact in f32; how many bits the tensor core keeps
// while summing the 32 of one instruction is not specified by the ISA, which is why the
// GEMMs hand each 128-wide k block's sum to an f32 accumulator (moemla_fp8_flush).
// ---------------------------------------------------------------------------------------
#if MOEMLA_HAS_MMA_FP8 && !defined(MOEMLA_EMULATE_MMA)
__device__ __forceinline__ void moemla_mma_16832_e4m3(float* d, const moemla_u32* a, const moemla_u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// Four adjacent FP8 codes as one register, the first in the low byte (p 4-byte aligned).
__device__ __forceinline__ moemla_u32 moemla_quad(const moemla_fp8* p) {
    return *reinterpret_cast<const moemla_u32*>(p);
}

// Two adjacent 16-bit elements as one register (p must be 4-byte aligned).
template <typename T>
__device__ __forceinline__ moemla_u32 moemla_pair(const T* p) {
    return *reinterpret_cast<const moemla_u32*>(p);
}
// Two 16-bit elements from anywhere, low = lo.
template <typename T>
__device__ __forceinline__ moemla_u32 moemla_pack(const T* lo, const T* hi) {
    return (moemla_u32)lo->bits | ((moemla_u32)hi->bits << 16);
}

// ---------------------------------------------------------------------------------------
// Block-wide top-k (moe_route.cu, dsa_indexer_topk.cu). Ranking: the larger value first,
// the lower index on ties, NaN ranks as -inf, -0 ties +0.
// ---------------------------------------------------------------------------------------
// Bins of one radix-select pass (8 bits).
#define MOEMLA_RADIX_BINS 256

// The smallest power of two >= k (k >= 1).
__device__ __forceinline__ int moemla_pow2_ceil(int k) {
    int p = 1;
    while (p < k) p <<= 1;
    return p;
}

// The ranking key of a score: an unsigned integer ordered as the floats are, NaN mapped
// to -inf and -0 to +0 (so that they tie).
__device__ __forceinline__ moemla_u32 moemla_rank_key(float v) {
    if (!(v == v)) v = MOEMLA_NEG_INF;
    if (v == 0.0f) v = 0.0f;
    const moemla_u32 u = moemla_float_bits(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Whether candidate a ranks before candidate b (MOEMLA_INT_MAX: no candidate, ranks last).
__device__ __forceinline__ bool moemla_ranks_before(const float* vals, int a, int b) {
    if (a == MOEMLA_INT_MAX) return false;
    if (b == MOEMLA_INT_MAX) return true;
    const moemla_u32 ka = moemla_rank_key(vals[a]);
    const moemla_u32 kb = moemla_rank_key(vals[b]);
    return ka > kb || (ka == kb && a < b);
}

// The k best of vals[0, n) (1 <= k <= n) by the ranking above, block-wide. Writes their
// indices to out[0, k): best first when `sorted`, else in no particular order. out holds
// moemla_pow2_ceil(k) ints when sorted (the bitonic sort pads with MOEMLA_INT_MAX), k
// otherwise. Scratch: hist[MOEMLA_RADIX_BINS], part[2 * blockDim.x], bcast[2]. Every
// thread of the block calls it; it starts and ends with a __syncthreads.
__device__ void moemla_block_topk(const float* vals, int n, int k, bool sorted, int* out,
                                  int* hist, int* part, int* bcast) {
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    __syncthreads();  // vals complete

    // 1. The k-th best key, 8 bits at a time from the top: per pass, a histogram of the
    //    next digit among the keys that share the digits chosen so far.
    moemla_u32 prefix = 0u, mask = 0u;
    int remaining = k;  // how many of the keys matching `prefix` are still to be taken
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = tid; d < MOEMLA_RADIX_BINS; d += nthreads) hist[d] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += nthreads) {
            const moemla_u32 key = moemla_rank_key(vals[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int above = 0;
            int d = MOEMLA_RADIX_BINS - 1;
            for (; d > 0; --d) {
                if (above + hist[d] >= remaining) break;
                above += hist[d];
            }
            bcast[0] = d;
            bcast[1] = remaining - above;
        }
        __syncthreads();
        prefix |= (moemla_u32)bcast[0] << shift;
        mask |= 255u << shift;
        remaining = bcast[1];
        // bcast is written again only after the next pass's two barriers.
    }
    const moemla_u32 threshold = prefix;  // the k-th best key
    const int need = remaining;           // keys equal to it to take, lowest indices first

    // 2. Ordered compaction: thread t owns the contiguous range [lo, hi); keys above the
    //    threshold fill out[0, k - need) in index order, the first `need` keys equal to it
    //    (in index order) fill out[k - need, k).
    const int chunk = (n + nthreads - 1) / nthreads;
    const int lo = (int)((moemla_i64)tid * chunk < n ? (moemla_i64)tid * chunk : n);
    const int hi = lo + chunk < n ? lo + chunk : n;
    int greater = 0, equal = 0;
    for (int i = lo; i < hi; ++i) {
        const moemla_u32 key = moemla_rank_key(vals[i]);
        greater += key > threshold;
        equal += key == threshold;
    }
    part[tid] = greater;
    part[nthreads + tid] = equal;
    __syncthreads();
    if (tid == 0) {
        int run_greater = 0, run_equal = 0;
        for (int t = 0; t < nthreads; ++t) {
            const int g = part[t], e = part[nthreads + t];
            part[t] = run_greater;
            part[nthreads + t] = run_equal;
            run_greater += g;
            run_equal += e;
        }
    }
    __syncthreads();
    int at_greater = part[tid];
    int at_equal = part[nthreads + tid];
    for (int i = lo; i < hi; ++i) {
        const moemla_u32 key = moemla_rank_key(vals[i]);
        if (key > threshold) {
            out[at_greater++] = i;
        } else if (key == threshold) {
            if (at_equal < need) out[k - need + at_equal] = i;
            ++at_equal;
        }
    }
    if (!sorted || k == 1) {
        __syncthreads();
        return;
    }

    // 3. Bitonic sort of out[0, p), p = k rounded up to a power of two, best first.
    const int p = moemla_pow2_ceil(k);
    for (int i = k + tid; i < p; i += nthreads) out[i] = MOEMLA_INT_MAX;
    __syncthreads();
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < p; i += nthreads) {
                const int j = i ^ stride;
                if (j <= i) continue;
                const int a = out[i], b = out[j];
                // In a `best first` run (i & size == 0) the better one goes to i.
                const bool best_first = (i & size) == 0;
                if (best_first ? moemla_ranks_before(vals, b, a) : moemla_ranks_before(vals, a, b)) {
                    out[i] = b;
                    out[j] = a;
                }
            }
            __syncthreads();
        }
    }
}

#endif  // MOEMLA_DEVICE_H
