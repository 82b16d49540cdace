// dsa_indexer_topk.cu — DeepSeek-V3.2's lightning indexer and its top-k over a paged cache
// (see kernels/README.md for the launch contract). Prepended by the backend with
// kernels/common/moemla_device.h.
//
// Three launches: mla_decode.cu's moemla_mla_check (the same index rules: cache_seqlens,
// then the used block-table entries, flagged), then
//   1. moemla_dsa_indexer_scores_*  one block per (64 positions, query i, batch b): the
//      tiled product of the query's [Hi, Di] heads with the 64 gathered key rows (f32
//      accumulation; mma.sync for f16/bf16 on sm_80+, FMA elsewhere),
//      score(p) = sum_h w[h] * max(0, q[h] . k_p), for p < L only;
//   2. moemla_dsa_indexer_topk      one block per query row: the top_k best of its L scores
//      by moemla_block_topk (radix select, ordered compaction, bitonic sort of the k
//      chosen: larger first, lower position on ties, NaN as -inf), written as flat cache
//      slots and scores, -1 / -inf past min(top_k, L).
// A bad cache_seqlens entry counts as 0 and a bad block-table entry is never dereferenced
// (its positions score 0 and give slot -1); both are flagged by the check, so the op's
// outputs are then not meaningful, but nothing is read out of bounds.

// Positions per scores block, heads and dims per step, threads per block.
#define MOEMLA_IDX_BN 64
#define MOEMLA_IDX_HT 32
#define MOEMLA_IDX_DK 32
#define MOEMLA_IDX_THREADS 256
// Head groups per block: thread t scores position t % BN for heads of group t / BN.
#define MOEMLA_IDX_HG (MOEMLA_IDX_THREADS / MOEMLA_IDX_BN)
// Heads per thread and step.
#define MOEMLA_IDX_HPT (MOEMLA_IDX_HT / MOEMLA_IDX_HG)
// Threads per top-k block.
#define MOEMLA_IDX_TOPK_THREADS 512

// Positions query i of a sequence of `seqlen` (<= 0: none), causal bottom-right aligned.
__device__ __forceinline__ int moemla_idx_len(int seqlen, int s_q, int i, int causal) {
    return causal ? seqlen - s_q + i + 1 : seqlen;
}

// A sequence length in [0, cap], else 0 (flagged by moemla_mla_check).
__device__ __forceinline__ int moemla_idx_seqlen(const int* cache_seqlens, int b, int cap) {
    const int len = cache_seqlens[b];
    return (len < 0 || len > cap) ? 0 : len;
}

#if MOEMLA_HAS_MMA_SYNC
// Tensor-core path (f16/bf16, sm_80+): the same tiles as 16-bit values in shared memory
// (rows padded by 8 elements), q . k by mma.sync m16n8k16 with f32 accumulation. The 8
// warps split each 32-head x 64-position step as 2 head tiles x 4 position quarters (two
// n8 fragments each); a lane keeps, per fragment, the weighted ReLU sums of positions
// 2t, 2t + 1 over its heads g, g + 8 of every step, summed over g at the end into
// part[head tile][position].
template <typename T>
__device__ __forceinline__ void moemla_idx_scores_mma(const T* __restrict__ qr,
                                                      const float* __restrict__ wr,
                                                      const T* __restrict__ k_cache,
                                                      const moemla_i64* rows, int h_i, int d_i,
                                                      float (*part)[MOEMLA_IDX_BN]) {
    constexpr int S = MOEMLA_IDX_DK + 8;
    __shared__ MOEMLA_ALIGN16 T qt[MOEMLA_IDX_HT * S];
    __shared__ MOEMLA_ALIGN16 T kt[MOEMLA_IDX_BN * S];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane >> 2, t = lane & 3;
    const int mt = warp >> 2, nq = warp & 3;
    T zero;
    zero.bits = 0;
    float s[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (int h0 = 0; h0 < h_i; h0 += MOEMLA_IDX_HT) {
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        for (int d0 = 0; d0 < d_i; d0 += MOEMLA_IDX_DK) {
            for (int e = tid; e < MOEMLA_IDX_HT * MOEMLA_IDX_DK; e += MOEMLA_IDX_THREADS) {
                const int hh = e / MOEMLA_IDX_DK, dd = e % MOEMLA_IDX_DK;
                const int h = h0 + hh, d = d0 + dd;
                qt[hh * S + dd] = (h < h_i && d < d_i) ? qr[(moemla_i64)h * d_i + d] : zero;
            }
            for (int e = tid; e < MOEMLA_IDX_BN * MOEMLA_IDX_DK; e += MOEMLA_IDX_THREADS) {
                const int pp = e / MOEMLA_IDX_DK, dd = e % MOEMLA_IDX_DK;
                const moemla_i64 row = rows[pp];
                const int d = d0 + dd;
                kt[pp * S + dd] = (row >= 0 && d < d_i) ? k_cache[row * d_i + d] : zero;
            }
            __syncthreads();
            for (int kk = 0; kk < MOEMLA_IDX_DK; kk += 16) {
                const T* a0 = qt + (mt * 16 + g) * S + kk + 2 * t;
                const T* a1 = a0 + 8 * S;
                const moemla_u32 a[4] = {moemla_pair(a0), moemla_pair(a1), moemla_pair(a0 + 8),
                                         moemla_pair(a1 + 8)};
                for (int j = 0; j < 2; ++j) {
                    const T* b0 = kt + (nq * 16 + j * 8 + g) * S + kk + 2 * t;
                    const moemla_u32 b[2] = {moemla_pair(b0), moemla_pair(b0 + 8)};
                    moemla_mma_16816(acc[j], a, b, T());
                }
            }
            __syncthreads();
        }
        const int ha = h0 + mt * 16 + g, hb = ha + 8;
        for (int j = 0; j < 2; ++j) {
            if (ha < h_i) {
                s[j][0] += wr[ha] * fmaxf(acc[j][0], 0.0f);
                s[j][1] += wr[ha] * fmaxf(acc[j][1], 0.0f);
            }
            if (hb < h_i) {
                s[j][0] += wr[hb] * fmaxf(acc[j][2], 0.0f);
                s[j][1] += wr[hb] * fmaxf(acc[j][3], 0.0f);
            }
        }
    }
    for (int j = 0; j < 2; ++j)
        for (int c = 0; c < 2; ++c)
            for (int m = 4; m < 32; m <<= 1) s[j][c] += moemla_shfl_xor(s[j][c], m);
    if (g == 0)
        for (int j = 0; j < 2; ++j)
            for (int c = 0; c < 2; ++c) part[mt][nq * 16 + j * 8 + 2 * t + c] = s[j][c];
}
#endif

template <typename T>
__device__ __forceinline__ void moemla_dsa_indexer_scores(
    const T* __restrict__ q, const float* __restrict__ weights, const T* __restrict__ k_cache,
    const int* __restrict__ block_table, const int* __restrict__ cache_seqlens,
    float* __restrict__ scores, int s_q, int h_i, int d_i, int num_blocks, int block_size,
    int max_blocks, int causal, int cap) {
    __shared__ float part[MOEMLA_IDX_HG][MOEMLA_IDX_BN];
    __shared__ moemla_i64 rows[MOEMLA_IDX_BN];

    const int i = blockIdx.y, b = blockIdx.z;
    const moemla_i64 r = (moemla_i64)b * s_q + i;
    const int len = moemla_idx_len(moemla_idx_seqlen(cache_seqlens, b, cap), s_q, i, causal);
    const int p0 = blockIdx.x * MOEMLA_IDX_BN;
    if (p0 >= len) return;  // the whole block: no barrier is skipped by part of it
    const int tid = threadIdx.x;

    // The cache row of each of the tile's positions; -1 past L or under a bad entry.
    if (tid < MOEMLA_IDX_BN) {
        const int p = p0 + tid;
        moemla_i64 row = -1;
        if (p < len) {
            const int blk = block_table[(moemla_i64)b * max_blocks + p / block_size];
            if (blk >= 0 && blk < num_blocks) row = (moemla_i64)blk * block_size + p % block_size;
        }
        rows[tid] = row;
    }
    __syncthreads();

    const T* qr = q + r * h_i * d_i;
    const float* wr = weights + r * h_i;
    constexpr bool MMA16 = MOEMLA_HAS_MMA_SYNC && moemla_is_16bit<T>::value;
    int groups = MOEMLA_IDX_HG;  // rows of part to sum
    if constexpr (MMA16) {
#if MOEMLA_HAS_MMA_SYNC
        moemla_idx_scores_mma<T>(qr, wr, k_cache, rows, h_i, d_i, part);
        groups = 2;
#endif
    } else {
        // Thread tid scores position pl for the heads of group hg.
        const int pl = tid % MOEMLA_IDX_BN, hg = tid / MOEMLA_IDX_BN;
        __shared__ float qs[MOEMLA_IDX_HT][MOEMLA_IDX_DK];
        __shared__ float ks[MOEMLA_IDX_BN][MOEMLA_IDX_DK + 1];
        float total = 0.0f;
        for (int h0 = 0; h0 < h_i; h0 += MOEMLA_IDX_HT) {
            float acc[MOEMLA_IDX_HPT];
            for (int e = 0; e < MOEMLA_IDX_HPT; ++e) acc[e] = 0.0f;
            for (int d0 = 0; d0 < d_i; d0 += MOEMLA_IDX_DK) {
                for (int e = tid; e < MOEMLA_IDX_HT * MOEMLA_IDX_DK; e += MOEMLA_IDX_THREADS) {
                    const int hh = e / MOEMLA_IDX_DK, dd = e % MOEMLA_IDX_DK;
                    const int h = h0 + hh, d = d0 + dd;
                    qs[hh][dd] = (h < h_i && d < d_i) ? moemla_load(qr + (moemla_i64)h * d_i + d) : 0.0f;
                }
                for (int e = tid; e < MOEMLA_IDX_BN * MOEMLA_IDX_DK; e += MOEMLA_IDX_THREADS) {
                    const int pp = e / MOEMLA_IDX_DK, dd = e % MOEMLA_IDX_DK;
                    const moemla_i64 row = rows[pp];
                    const int d = d0 + dd;
                    ks[pp][dd] = (row >= 0 && d < d_i) ? moemla_load(k_cache + row * d_i + d) : 0.0f;
                }
                __syncthreads();
                for (int dd = 0; dd < MOEMLA_IDX_DK; ++dd) {
                    const float kv = ks[pl][dd];
                    for (int e = 0; e < MOEMLA_IDX_HPT; ++e) acc[e] += qs[hg * MOEMLA_IDX_HPT + e][dd] * kv;
                }
                __syncthreads();
            }
            for (int e = 0; e < MOEMLA_IDX_HPT; ++e) {
                const int h = h0 + hg * MOEMLA_IDX_HPT + e;
                // fmaxf: a NaN product counts as 0, as the other backends' max(0, x) does.
                if (h < h_i) total += wr[h] * fmaxf(acc[e], 0.0f);
            }
        }
        part[hg][pl] = total;
    }
    __syncthreads();
    if (tid < MOEMLA_IDX_BN && p0 + tid < len) {
        float s = part[0][tid];
        for (int g = 1; g < groups; ++g) s += part[g][tid];
        scores[r * cap + p0 + tid] = s;
    }
}

#define MOEMLA_IDX_SCORES_ENTRY(SFX, T)                                                           \
    extern "C" __global__ void moemla_dsa_indexer_scores_##SFX(                                  \
        const T* q, const float* weights, const T* k_cache, const int* block_table,              \
        const int* cache_seqlens, float* scores, int s_q, int h_i, int d_i, int num_blocks,      \
        int block_size, int max_blocks, int causal, int cap) {                                   \
        moemla_dsa_indexer_scores<T>(q, weights, k_cache, block_table, cache_seqlens, scores,    \
                                     s_q, h_i, d_i, num_blocks, block_size, max_blocks, causal,  \
                                     cap);                                                       \
    }

MOEMLA_IDX_SCORES_ENTRY(f32, float)
MOEMLA_IDX_SCORES_ENTRY(f16, moemla_f16)
MOEMLA_IDX_SCORES_ENTRY(bf16, moemla_bf16)

// One block of MOEMLA_IDX_TOPK_THREADS per query row r = b * s_q + i. `cand` holds
// `cand_stride` ints per row (the power of two >= min(top_k, cap)): the chosen positions,
// best first. Writes topk_indices / topk_scores [rows, top_k].
extern "C" __global__ void moemla_dsa_indexer_topk(
    const float* __restrict__ scores, const int* __restrict__ block_table,
    const int* __restrict__ cache_seqlens, int* __restrict__ cand, int cand_stride,
    int* __restrict__ topk_indices, float* __restrict__ topk_scores, int s_q, int num_blocks,
    int block_size, int max_blocks, int causal, int cap, int top_k) {
    __shared__ int hist[MOEMLA_RADIX_BINS];
    __shared__ int part[2 * MOEMLA_IDX_TOPK_THREADS];
    __shared__ int bcast[2];
    const moemla_i64 r = blockIdx.x;
    const int b = (int)(r / s_q), i = (int)(r % s_q);
    const int len = moemla_idx_len(moemla_idx_seqlen(cache_seqlens, b, cap), s_q, i, causal);
    const int n = len > 0 ? len : 0;
    const int k = top_k < n ? top_k : n;
    const float* row = scores + r * cap;
    int* chosen = cand + r * cand_stride;
    if (k > 0) moemla_block_topk(row, n, k, true, chosen, hist, part, bcast);
    for (int j = threadIdx.x; j < top_k; j += blockDim.x) {
        int slot = -1;
        float score = MOEMLA_NEG_INF;
        if (j < k) {
            const int p = chosen[j];
            const int blk = block_table[(moemla_i64)b * max_blocks + p / block_size];
            if (blk >= 0 && blk < num_blocks) {
                slot = blk * block_size + p % block_size;  // < num_blocks * block_size: an int
                score = row[p];
            }
        }
        topk_indices[r * top_k + j] = slot;
        topk_scores[r * top_k + j] = score;
    }
}
