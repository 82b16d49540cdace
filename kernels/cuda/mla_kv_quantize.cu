// mla_kv_quantize.cu — latent KV rows to FlashMLA's 656-byte FP8 row (contract v2
// `fp8_ds_v32`; see kernels/README.md). Prepended by the backend with
// kernels/common/moemla_device.h.
//
// Row layout: bytes [0, 512) e4m3 codes of dims 0..512; [512, 528) four little-endian f32
// scales, one per 128-dim tile; [528, 656) the 64 rope dims as little-endian bf16.
// Per tile: amax = max|x| (f32), sc = 2^ceil(log2 max(amax / 448, 1e-4)) from the bits,
// codes = e4m3(x / sc) (-0.0 -> 0x80); rope: bf16 round-to-nearest-even of the input.
// A non-finite input is flagged (first bad element, its f32 bits) and its row is written
// from the arithmetic as it falls (the op's output is then not meaningful).

#define MOEMLA_KVQ_THREADS 128
#define MOEMLA_KVQ_DIM 576
#define MOEMLA_KVQ_ROW 656

template <typename T>
__device__ __forceinline__ void moemla_mla_kv_quantize(const T* __restrict__ kv, unsigned char* __restrict__ out,
                                                       moemla_u64* __restrict__ err) {
    __shared__ float red[4][MOEMLA_KVQ_THREADS / 32];
    const moemla_i64 row = blockIdx.x;
    const int tid = threadIdx.x;
    const int lane = tid % MOEMLA_WARP_SIZE;
    const int warp = tid / MOEMLA_WARP_SIZE;
    const int nwarps = (blockDim.x + MOEMLA_WARP_SIZE - 1) / MOEMLA_WARP_SIZE;
    const T* src = kv + row * MOEMLA_KVQ_DIM;
    unsigned char* dst = out + row * MOEMLA_KVQ_ROW;

    // Thread tid holds dim tid of each of the four tiles (blockDim.x == 128).
    float v[4];
    float m[4];
    for (int t = 0; t < 4; ++t) {
        v[t] = moemla_load(src + t * 128 + tid);
        m[t] = moemla_warp_max(fabsf(v[t]));
        const moemla_u32 bits = moemla_float_bits(v[t]);
        if ((bits & 0x7f800000u) == 0x7f800000u) moemla_flag_index(err, row * MOEMLA_KVQ_DIM + t * 128 + tid, (int)bits);
    }
    if (tid < 64) {
        const float r = moemla_load(src + 512 + tid);
        const moemla_u32 bits = moemla_float_bits(r);
        if ((bits & 0x7f800000u) == 0x7f800000u) moemla_flag_index(err, row * MOEMLA_KVQ_DIM + 512 + tid, (int)bits);
        const moemla_u32 h = moemla_f32_to_bf16(r);
        dst[528 + 2 * tid] = (unsigned char)(h & 0xffu);
        dst[528 + 2 * tid + 1] = (unsigned char)(h >> 8);
    }
    if (lane == 0)
        for (int t = 0; t < 4; ++t) red[t][warp] = m[t];
    __syncthreads();
    for (int t = 0; t < 4; ++t) {
        float amax = red[t][0];
        for (int w = 1; w < nwarps; ++w) amax = fmaxf(amax, red[t][w]);
        const float sc = moemla_pow2_ceil_f32(fmaxf(amax / 448.0f, 1e-4f));
        dst[t * 128 + tid] = (unsigned char)moemla_f32_to_e4m3(v[t] / sc);
        if (tid < 4) dst[512 + 4 * t + tid] = (unsigned char)((moemla_float_bits(sc) >> (8 * tid)) & 0xffu);
    }
}

// Grid (N, 1, 1), block (128, 1, 1). err: one u64 flag (position: the element's linear
// index in kv; value: its f32 bits).
#define MOEMLA_KVQ_ENTRY(SFX, T)                                                                 \
    extern "C" __global__ void moemla_mla_kv_quantize_##SFX(const T* kv, unsigned char* kv_fp8, \
                                                            moemla_u64* err) {                   \
        moemla_mla_kv_quantize<T>(kv, kv_fp8, err);                                              \
    }

MOEMLA_KVQ_ENTRY(f32, float)
MOEMLA_KVQ_ENTRY(f16, moemla_f16)
MOEMLA_KVQ_ENTRY(bf16, moemla_bf16)
