// mla_kv_quantize.cu — latent KV rows to FlashMLA's 656-byte FP8 row (contract v2
// `fp8_ds_v32`; see kernels/README.md), and mla_cache_write, which writes rows into a paged
// cache in place (dense, or as 656-byte rows through the same row writer, byte for byte).
// Prepended by the backend with kernels/common/moemla_device.h.
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

// Loads one 576-value row for the row writer: thread tid (of 128) gets dim tid of each
// 128-dim tile in v[t], and rope dim tid in *r for tid < 64 (0 otherwise). A non-finite
// value is flagged in `err` at position `pos0` + its dim, with its f32 bits. Returns
// whether this thread loaded a non-finite value.
template <typename T>
__device__ __forceinline__ bool moemla_ds_v32_load(const T* __restrict__ src, moemla_i64 pos0, moemla_u64* __restrict__ err,
                                                   float* v, float* r) {
    const int tid = threadIdx.x;
    bool bad = false;
    for (int t = 0; t < 4; ++t) {
        v[t] = moemla_load(src + t * 128 + tid);
        const moemla_u32 bits = moemla_float_bits(v[t]);
        if ((bits & 0x7f800000u) == 0x7f800000u) {
            moemla_flag_index(err, pos0 + t * 128 + tid, (int)bits);
            bad = true;
        }
    }
    *r = 0.0f;
    if (tid < 64) {
        *r = moemla_load(src + 512 + tid);
        const moemla_u32 bits = moemla_float_bits(*r);
        if ((bits & 0x7f800000u) == 0x7f800000u) {
            moemla_flag_index(err, pos0 + 512 + tid, (int)bits);
            bad = true;
        }
    }
    return bad;
}

// The row writer (mla_kv_quantize and mla_cache_write): the values moemla_ds_v32_load gave
// this thread, quantized into the 656-byte row `dst`. Every thread of the 128-thread block
// calls it (a barrier); `red` is the block's shared [4][4] (one f32 per tile and warp).
__device__ __forceinline__ void moemla_ds_v32_store(const float* v, float r, unsigned char* __restrict__ dst,
                                                    float (*red)[MOEMLA_KVQ_THREADS / 32]) {
    const int tid = threadIdx.x;
    const int lane = tid % MOEMLA_WARP_SIZE;
    const int warp = tid / MOEMLA_WARP_SIZE;
    const int nwarps = (blockDim.x + MOEMLA_WARP_SIZE - 1) / MOEMLA_WARP_SIZE;
    float m[4];
    for (int t = 0; t < 4; ++t) m[t] = moemla_warp_max(fabsf(v[t]));
    if (tid < 64) {
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

template <typename T>
__device__ __forceinline__ void moemla_mla_kv_quantize(const T* __restrict__ kv, unsigned char* __restrict__ out,
                                                       moemla_u64* __restrict__ err) {
    __shared__ float red[4][MOEMLA_KVQ_THREADS / 32];
    const moemla_i64 row = blockIdx.x;
    float v[4];
    float r;
    moemla_ds_v32_load(kv + row * MOEMLA_KVQ_DIM, row * MOEMLA_KVQ_DIM, err, v, &r);
    moemla_ds_v32_store(v, r, out + row * MOEMLA_KVQ_ROW, red);
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

// ---------------------------------------------------------------------------------------
// mla_cache_write: row blockIdx.x of kv goes to flat slot slot_mapping[row] of the cache.
// -1 skips the row; a slot outside [0, slots) is flagged (position: the row, value: the
// slot) and the row not written. When two rows name one slot the later row wins: a row
// writes only if no row after it names its slot, so no two blocks ever write one slot and
// the result never depends on scheduling. Which rows those are is found one of two ways,
// as the plan chooses (kernel-plan cache_write.rs):
//   - few rows (table null): each block scans the rows after its own (the plan scans up
//     to its `cache_write::SCAN_ROWS` = 1024 rows: at most 1023 entries, 8 per thread);
//   - many rows: a winner table in the workspace, `mask + 1` (a power of two >= 2N)
//     entries of (slot, row) pairs, keys at [0, mask] and rows at [mask + 1, 2 * mask + 1],
//     open addressing with linear probing. moemla_cache_winner_clear empties it,
//     moemla_cache_winner_insert puts every row with a valid slot under its slot keeping
//     the largest row (atomicCAS on the key, atomicMax on the row: the same table contents
//     in whatever order the threads run), and the write kernel looks its slot up. Linear in
//     N with the expected O(1) probes of a half-full table; entries are never removed, so a
//     lookup meets its key before any empty entry.
// ---------------------------------------------------------------------------------------

// The first table entry a slot probes: MurmurHash3's 32-bit finalizer of the slot (a
// bijection whose low bits all depend on every bit), masked (mask + 1 a power of two).
__device__ __forceinline__ int moemla_cache_winner_hash(int slot, int mask) {
    moemla_u32 x = (moemla_u32)slot;
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return (int)(x & (moemla_u32)mask);
}

// Empties the winner table: every key and row -1. Grid (ceil((mask + 1) / 256), 1, 1),
// block (256, 1, 1).
extern "C" __global__ void moemla_cache_winner_clear(int* table, int mask) {
    const moemla_i64 i = (moemla_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i > mask) return;
    table[i] = -1;
    table[(moemla_i64)mask + 1 + i] = -1;
}

// Puts row i (one thread each) under its slot, keeping the largest row; -1 and bad slots
// are left out (the write kernel skips or flags them). Grid (ceil(N / 256), 1, 1), block
// (256, 1, 1).
extern "C" __global__ void moemla_cache_winner_insert(const int* slot_mapping, int n, int slots, int* table, int mask) {
    const moemla_i64 i = (moemla_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int slot = slot_mapping[i];
    if (slot < 0 || slot >= slots) return;
    int* rows = table + (moemla_i64)mask + 1;
    // At most N distinct keys in more than 2N entries: an empty entry is always ahead.
    for (int h = moemla_cache_winner_hash(slot, mask);; h = (h + 1) & mask) {
        const int key = atomicCAS(&table[h], -1, slot);
        if (key == -1 || key == slot) {
            atomicMax(&rows[h], (int)i);
            return;
        }
    }
}

// Whether a row after `row` names `slot` (the block's answer, valid after the barrier in
// it). Called by every thread of the block.
__device__ __forceinline__ bool moemla_cache_named_later(const int* __restrict__ slot_mapping, int n, int row, int slot,
                                                         const int* __restrict__ table, int mask, int* flag) {
    if (threadIdx.x == 0) *flag = 0;
    __syncthreads();
    if (table == nullptr) {
        for (int j = row + 1 + (int)threadIdx.x; j < n; j += (int)blockDim.x)
            if (slot_mapping[j] == slot) {
                *flag = 1;
                break;
            }
    } else if (threadIdx.x == 0) {
        int h = moemla_cache_winner_hash(slot, mask);
        while (table[h] != slot) h = (h + 1) & mask;
        *flag = table[(moemla_i64)mask + 1 + h] != row;
    }
    __syncthreads();
    return *flag != 0;
}

// Dense cache: rows of `row_bytes` bytes copied as stored (16-, 4-, 2- or 1-byte accesses,
// the widest that row_bytes and both base addresses allow). Grid (N, 1, 1), block (128, 1,
// 1). err: one u64 flag for slot_mapping. table, mask: the winner table (null: scan).
extern "C" __global__ void moemla_mla_cache_write_dense(const unsigned char* kv, const int* slot_mapping,
                                                        unsigned char* cache, int n, int row_bytes, int slots,
                                                        moemla_u64* err, const int* table, int mask) {
    __shared__ int skip;
    const int row = blockIdx.x;
    const int tid = threadIdx.x;
    const int slot = slot_mapping[row];
    if (slot == -1) return;
    if (slot < 0 || slot >= slots) {
        if (tid == 0) moemla_flag_index(err, row, slot);
        return;
    }
    if (moemla_cache_named_later(slot_mapping, n, row, slot, table, mask, &skip)) return;
    const unsigned char* src = kv + (moemla_i64)row * row_bytes;
    unsigned char* dst = cache + (moemla_i64)slot * row_bytes;
    const moemla_u64 align = (moemla_u64)row_bytes | (moemla_u64)kv | (moemla_u64)cache;
    if (align % 16 == 0) {
        for (int c = tid * 16; c < row_bytes; c += blockDim.x * 16) moemla_copy16(dst + c, src + c);
    } else if (align % 4 == 0) {
        for (int c = tid * 4; c < row_bytes; c += blockDim.x * 4)
            *reinterpret_cast<moemla_u32*>(dst + c) = *reinterpret_cast<const moemla_u32*>(src + c);
    } else if (align % 2 == 0) {
        for (int c = tid * 2; c < row_bytes; c += blockDim.x * 2)
            *reinterpret_cast<moemla_u16*>(dst + c) = *reinterpret_cast<const moemla_u16*>(src + c);
    } else {
        for (int c = tid; c < row_bytes; c += blockDim.x) dst[c] = src[c];
    }
}

// fp8_ds_v32 cache: each row quantized by the row writer above, exactly as
// mla_kv_quantize. err u64[2]: err[0] the first non-finite value of a row whose slot is
// not -1 (position: its linear index in kv, value: its f32 bits; such a row is not
// written), err[1] the first bad slot (position: the row). table, mask: the winner table
// (null: scan). Grid (N, 1, 1), block (128, 1, 1).
template <typename T>
__device__ __forceinline__ void moemla_mla_cache_write_fp8(const T* __restrict__ kv, const int* __restrict__ slot_mapping,
                                                           unsigned char* __restrict__ cache, int n, int slots,
                                                           moemla_u64* __restrict__ err, const int* __restrict__ table,
                                                           int mask) {
    __shared__ float red[4][MOEMLA_KVQ_THREADS / 32];
    __shared__ int skip;
    __shared__ int bad_row;
    const moemla_i64 row = blockIdx.x;
    const int slot = slot_mapping[row];
    if (slot == -1) return;
    float v[4];
    float r;
    const bool bad = moemla_ds_v32_load(kv + row * MOEMLA_KVQ_DIM, row * MOEMLA_KVQ_DIM, err, v, &r);
    if (slot < 0 || slot >= slots) {
        if (threadIdx.x == 0) moemla_flag_index(err + 1, row, slot);
        return;
    }
    if (threadIdx.x == 0) bad_row = 0;
    __syncthreads();
    if (bad) bad_row = 1;
    if (moemla_cache_named_later(slot_mapping, n, (int)row, slot, table, mask, &skip) || bad_row) return;
    moemla_ds_v32_store(v, r, cache + (moemla_i64)slot * MOEMLA_KVQ_ROW, red);
}

#define MOEMLA_CW_ENTRY(SFX, T)                                                                            \
    extern "C" __global__ void moemla_mla_cache_write_fp8_##SFX(const T* kv, const int* slot_mapping,     \
                                                                unsigned char* cache, int n, int slots,   \
                                                                moemla_u64* err, const int* table,         \
                                                                int mask) {                                \
        moemla_mla_cache_write_fp8<T>(kv, slot_mapping, cache, n, slots, err, table, mask);               \
    }

MOEMLA_CW_ENTRY(f32, float)
MOEMLA_CW_ENTRY(f16, moemla_f16)
MOEMLA_CW_ENTRY(bf16, moemla_bf16)
