// mla_decode.cu — absorbed MLA decode over a paged latent cache (see kernels/README.md).
// Prepended by the backend with kernels/common/moemla_device.h.
//
//   1. moemla_mla_check     seqlens in [0, max_blocks*block_size], used table entries in
//                           [0, num_blocks); first bad position and its value flagged
//   2. moemla_mla_decode_*  one block per (split, 16-row query tile, batch * kv head):
//                           S = Q K^T, online softmax (f32), O = P V, written per split
//                           (_fp8_*: over 656-byte fp8_ds_v32 rows, dequantized on load)
//   3. moemla_mla_combine_* merges the splits by their log-sum-exp
// mla_sparse_decode runs the same decode over the listed slots of each query instead of a
// sequence (moemla_mla_sparse_check, moemla_mla_sparse_decode[_fp8]_*, and
// moemla_mla_sparse_combine_* which also applies the attention sink).
// Cache slots at or past a row's limit are never loaded; masking is a select, never a
// multiply (a NaN slot times zero would still be NaN).

#define MOEMLA_MLA_MAX_SPLITS 64
#define MOEMLA_MLA_THREADS 256

// ---------------------------------------------------------------------------------------
// 1. Index check
// ---------------------------------------------------------------------------------------
extern "C" __global__ void moemla_mla_check(const int* __restrict__ block_table,
                                            const int* __restrict__ cache_seqlens, int batch,
                                            int max_blocks, int block_size, int num_blocks,
                                            moemla_u64* __restrict__ err) {
    const moemla_i64 idx = (moemla_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (moemla_i64)batch * max_blocks) return;
    const int b = (int)(idx / max_blocks);
    const int j = (int)(idx % max_blocks);
    const int len = cache_seqlens[b];
    const moemla_i64 cap = (moemla_i64)max_blocks * block_size;
    if (len < 0 || len > cap) {
        if (j == 0) moemla_flag_index(&err[0], b, len);
        return;
    }
    const moemla_i64 used = ((moemla_i64)len + block_size - 1) / block_size;
    if (j < used) {
        const int blk = block_table[idx];
        if (blk < 0 || blk >= num_blocks) moemla_flag_index(&err[1], idx, blk);
    }
}

// Sparse: topk_length[b] (if given) in [0, topk] (flag 0: position b), and each entry
// j < topk_length[b] of indices [B, Sq, topk] -1 or a slot in [0, slots) (flag 1: flat
// position). Entries past a row's length are never read.
extern "C" __global__ void moemla_mla_sparse_check(const int* __restrict__ indices,
                                                   const int* __restrict__ topk_length, int batch,
                                                   int s_q, int topk, int slots,
                                                   moemla_u64* __restrict__ err) {
    const moemla_i64 idx = (moemla_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (moemla_i64)batch * s_q * topk) return;
    const int r = (int)(idx / topk);
    const int j = (int)(idx % topk);
    const int b = r / s_q;
    const int len = topk_length != nullptr ? topk_length[b] : topk;
    if (len < 0 || len > topk) {
        if (r % s_q == 0 && j == 0) moemla_flag_index(&err[0], b, len);
        return;
    }
    if (j < len) {
        const int s = indices[idx];
        if (s != -1 && (s < 0 || s >= slots)) moemla_flag_index(&err[1], idx, s);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Split-KV decode
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ moemla_i64 moemla_align16(moemla_i64 bytes) { return (bytes + 15) & ~(moemla_i64)15; }

// The value of dim d (< 576) of a 656-byte fp8_ds_v32 row (contract v2): e4m3 code times
// its tile's stored f32 scale (multiplied as stored, whatever it is) below 512, the bf16
// rope value above.
__device__ __forceinline__ float moemla_ds_v32_value(const unsigned char* row, int d) {
    if (d < 512) {
        const unsigned char* s = row + 512 + 4 * (d / 128);
        const moemla_u32 bits = (moemla_u32)s[0] | ((moemla_u32)s[1] << 8) | ((moemla_u32)s[2] << 16) |
                                ((moemla_u32)s[3] << 24);
        return moemla_e4m3_to_f32(row[d]) * moemla_bits_float(bits);
    }
    const int r = d - 512;
    return moemla_bf16_to_f32((moemla_u16)(row[528 + 2 * r] | (row[529 + 2 * r] << 8)));
}

// The cache row (slot * h_kv + kvh) behind position pos of the block's rows, or -1 when
// there is none (past hi, a bad table entry; sparse: a -1 or bad index).
template <bool SPARSE>
__device__ __forceinline__ moemla_i64 moemla_mla_row(const int* __restrict__ block_table,
                                                     const int* __restrict__ sparse_row, moemla_i64 pos,
                                                     moemla_i64 hi, int b, int kvh, int h_kv,
                                                     int num_blocks, int block_size, int max_blocks) {
    if (pos >= hi) return -1;
    if constexpr (SPARSE) {
        const int s = sparse_row[pos];
        return (s >= 0 && (moemla_i64)s < (moemla_i64)num_blocks * block_size) ? (moemla_i64)s : -1;
    } else {
        const int blk = block_table[(moemla_i64)b * max_blocks + pos / block_size];
        if (blk < 0 || blk >= num_blocks) return -1;
        return ((moemla_i64)blk * block_size + pos % block_size) * h_kv + kvh;
    }
}

// KV: T (a dense cache of d_qk values per row) or unsigned char (656-byte fp8_ds_v32 rows,
// d_qk 576, dequantized into the K tile in T as they are staged).
// SPARSE (mla_sparse_decode): blockIdx.z is the query row b * s_q + i, blockIdx.y a tile of
// its heads, the positions are the entries [0, topk_length[b]) of indices[b, i, :] (h_kv 1,
// causal 0), and a column whose entry is -1 is masked out of the softmax like a position
// past the limit.
template <typename T, typename KV, bool SPARSE = false>
__device__ __forceinline__ void moemla_mla_decode(const T* __restrict__ q, const KV* __restrict__ kv,
                                  const int* __restrict__ block_table,
                                  const int* __restrict__ cache_seqlens, float* __restrict__ o_part,
                                  float* __restrict__ lse_part, int batch, int s_q, int h_q,
                                  int h_kv, int d_qk, int d_v, int num_blocks, int block_size,
                                  int max_blocks, int causal, float softmax_scale, int num_splits,
                                  int block_q, int block_n, const int* __restrict__ indices = nullptr,
                                  const int* __restrict__ topk_length = nullptr, int topk = 0) {
    MOEMLA_DYN_SMEM(smem);
    constexpr bool MMA16 = MOEMLA_HAS_MMA_SYNC && moemla_is_16bit<T>::value;
    const bool use_mma = MMA16 && block_q == 16 && blockDim.x == MOEMLA_MLA_THREADS;

    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const int lane = tid % MOEMLA_WARP_SIZE;
    const int warp = tid / MOEMLA_WARP_SIZE;
    const int nwarps = (nthreads + MOEMLA_WARP_SIZE - 1) / MOEMLA_WARP_SIZE;

    const int split = blockIdx.x;
    const int m0 = blockIdx.y * block_q;
    const int b = SPARSE ? (int)(blockIdx.z / s_q) : (int)(blockIdx.z / h_kv);
    const int kvh = SPARSE ? 0 : (int)(blockIdx.z % h_kv);
    const int group = h_q / h_kv;
    const int rows_total = s_q * group;
    // Tile row r is row m0 + r of the (b, kv head) rows, or (sparse) head m0 + r of query
    // i0; rows_total when there is none.
    const int i0 = SPARSE ? (int)(blockIdx.z % s_q) : 0;
    const int* sparse_row = SPARSE ? indices + ((moemla_i64)b * s_q + i0) * topk : nullptr;
    auto tile_row = [&](int r) -> int {
        if (SPARSE) return m0 + r < h_q ? i0 * h_q + m0 + r : rows_total;
        return m0 + r;
    };
    const moemla_i64 out_rows = (moemla_i64)batch * s_q * h_q;

    // Shared-memory layout (kernels/README.md; crates/kernel-plan mla::decode_shared_bytes).
    const int d16 = (d_qk + 15) / 16 * 16;
    const int ks_stride = d16 + 8;
    const int os_stride = (d_v + 7) / 8 * 8;
    const int ps_stride = block_n + 8;
    unsigned char* cursor = smem;
    T* Qs = reinterpret_cast<T*>(cursor);
    cursor += moemla_align16((moemla_i64)block_q * ks_stride * sizeof(T));
    T* Ks = reinterpret_cast<T*>(cursor);
    cursor += moemla_align16((moemla_i64)block_n * ks_stride * sizeof(T));
    float* Os = reinterpret_cast<float*>(cursor);
    cursor += moemla_align16((moemla_i64)block_q * os_stride * 4);
    float* Ss = reinterpret_cast<float*>(cursor);
    cursor += moemla_align16((moemla_i64)block_q * block_n * 4);
    T* Ps = reinterpret_cast<T*>(cursor);
    cursor += moemla_align16((moemla_i64)block_q * ps_stride * sizeof(T));
    float* m_s = reinterpret_cast<float*>(cursor);
    float* l_s = m_s + block_q;
    float* alpha_s = l_s + block_q;
    int* lim_s = reinterpret_cast<int*>(alpha_s + block_q);
    cursor += moemla_align16((moemla_i64)block_q * 16);
    int* valid_s = reinterpret_cast<int*>(cursor);  // sparse only: block_n column flags

    // This split's positions: [start, end), the rule of kernel-plan mla::split_range.
    moemla_i64 seqlen;
    if constexpr (SPARSE) {
        seqlen = topk_length != nullptr ? topk_length[b] : topk;
        if (seqlen < 0 || seqlen > topk) seqlen = 0;  // flagged by check
    } else {
        seqlen = cache_seqlens[b];
        if (seqlen < 0 || seqlen > (moemla_i64)max_blocks * block_size) seqlen = 0;  // flagged by check
    }
    const moemla_i64 per_split = (seqlen + num_splits - 1) / num_splits;
    const moemla_i64 len = (per_split + block_n - 1) / block_n * block_n;
    const moemla_i64 start = (moemla_i64)split * len < seqlen ? (moemla_i64)split * len : seqlen;
    const moemla_i64 end = start + len < seqlen ? start + len : seqlen;

    // Per-row limits, Q tile, accumulators.
    for (int r = tid; r < block_q; r += nthreads) {
        const int rg = tile_row(r);
        moemla_i64 lim = start;  // empty
        if (rg < rows_total) {
            const moemla_i64 i = rg / group;
            const moemla_i64 attended = causal ? seqlen - s_q + i + 1 : seqlen;
            lim = attended < end ? attended : end;
            if (lim < start) lim = start;
        }
        lim_s[r] = (int)lim;
        m_s[r] = MOEMLA_NEG_INF;
        l_s[r] = 0.0f;
        alpha_s[r] = 1.0f;
    }
    for (int idx = tid; idx < block_q * d16; idx += nthreads) {
        const int r = idx / d16;
        const int d = idx % d16;
        const int rg = tile_row(r);
        if (rg < rows_total && d < d_qk) {
            const int i = rg / group;
            const int h = kvh * group + rg % group;
            Qs[r * ks_stride + d] = q[(((moemla_i64)b * s_q + i) * h_q + h) * d_qk + d];
        } else {
            moemla_store(Qs + r * ks_stride + d, 0.0f);
        }
    }
    for (int idx = tid; idx < block_q * os_stride; idx += nthreads) Os[idx] = 0.0f;
    __syncthreads();

    moemla_i64 hi = start;  // the block reads positions [start, hi), hi <= seqlen
    for (int r = 0; r < block_q; ++r) hi = lim_s[r] > hi ? lim_s[r] : hi;

    constexpr int VEC = 16 / (int)sizeof(T);
    const bool vec_ok = d_qk % VEC == 0;
    const int chunks_per_row = d16 / VEC;

    for (moemla_i64 c0 = start; c0 < hi; c0 += block_n) {
        // (a) Stage cache rows c0 .. c0 + block_n; rows at or past hi (sparse: also -1
        // entries) are zero, not loaded. Whole 16-byte chunks of a dense cache are copied
        // asynchronously (all of the tile's loads in flight at once on sm_80+).
        if constexpr (SPARSE) {
            for (int n = tid; n < block_n; n += nthreads)
                valid_s[n] = moemla_mla_row<SPARSE>(block_table, sparse_row, c0 + n, hi, b, kvh, h_kv, num_blocks,
                                                    block_size, max_blocks) >= 0;
        }
        if constexpr (sizeof(KV) == 1) {
            for (int idx = tid; idx < block_n * d16; idx += nthreads) {
                const int n = idx / d16;
                const int d = idx % d16;
                float v = 0.0f;
                if (d < d_qk) {
                    const moemla_i64 row = moemla_mla_row<SPARSE>(block_table, sparse_row, c0 + n, hi, b, kvh, h_kv,
                                                                  num_blocks, block_size, max_blocks);
                    if (row >= 0) v = moemla_ds_v32_value(reinterpret_cast<const unsigned char*>(kv) + row * 656, d);
                }
                moemla_store(Ks + n * ks_stride + d, v);
            }
        } else {
            for (int idx = tid; idx < block_n * chunks_per_row; idx += nthreads) {
                const int n = idx / chunks_per_row;
                const int d = (idx % chunks_per_row) * VEC;
                const moemla_i64 row = moemla_mla_row<SPARSE>(block_table, sparse_row, c0 + n, hi, b, kvh, h_kv,
                                                              num_blocks, block_size, max_blocks);
                const T* src = row >= 0 ? reinterpret_cast<const T*>(kv) + row * d_qk : nullptr;
                T* dst = Ks + n * ks_stride + d;
                if (src != nullptr && vec_ok && d + VEC <= d_qk) {
                    moemla_copy16_async(dst, src + d);
                } else {
                    for (int v = 0; v < VEC; ++v) {
                        if (src != nullptr && d + v < d_qk) {
                            dst[v] = src[d + v];
                        } else {
                            moemla_store(dst + v, 0.0f);
                        }
                    }
                }
            }
            moemla_copy_async_wait();
        }
        __syncthreads();

        // (b) S = Q K^T (unscaled) into Ss[r][n].
        bool done = false;
#if MOEMLA_HAS_MMA_SYNC
        if constexpr (MMA16) {
            if (use_mma) {
                const int g = lane >> 2, t = lane & 3;
                for (int f = warp; f < block_n / 8; f += nwarps) {
                    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    for (int ks = 0; ks < d16 / 16; ++ks) {
                        const T* a0 = Qs + g * ks_stride + ks * 16 + 2 * t;
                        const T* a1 = a0 + 8 * ks_stride;
                        const moemla_u32 a[4] = {moemla_pair(a0), moemla_pair(a1), moemla_pair(a0 + 8),
                                                 moemla_pair(a1 + 8)};
                        const T* b0 = Ks + (f * 8 + g) * ks_stride + ks * 16 + 2 * t;
                        const moemla_u32 bf[2] = {moemla_pair(b0), moemla_pair(b0 + 8)};
                        moemla_mma_16816(acc, a, bf, T());
                    }
                    const int col = f * 8 + 2 * t;
                    Ss[g * block_n + col] = acc[0];
                    Ss[g * block_n + col + 1] = acc[1];
                    Ss[(g + 8) * block_n + col] = acc[2];
                    Ss[(g + 8) * block_n + col + 1] = acc[3];
                }
                done = true;
            }
        }
#endif
        if (!done) {
            for (int idx = tid; idx < block_q * block_n; idx += nthreads) {
                const int r = idx / block_n;
                const int n = idx % block_n;
                const T* qr = Qs + r * ks_stride;
                const T* kr = Ks + n * ks_stride;
                float dot = 0.0f;
                for (int d = 0; d < d_qk; ++d) dot += moemla_load(qr + d) * moemla_load(kr + d);
                Ss[idx] = dot;
            }
        }
        __syncthreads();

        // (c) Online softmax, one warp per row: P into Ss (f32) and Ps (T, tensor path).
        // Lane 0 alone reads and writes the row's running max, sum and rescale factor: no
        // lane reads a word another lane of its warp writes in this phase.
        for (int r = warp; r < block_q; r += nwarps) {
            const moemla_i64 lim = lim_s[r];
            const float m_old = lane == 0 ? m_s[r] : MOEMLA_NEG_INF;
            float mx = m_old;
            for (int n = lane; n < block_n; n += MOEMLA_WARP_SIZE) {
                const bool in = c0 + n < lim && (!SPARSE || valid_s[n] != 0);
                const float s = in ? Ss[r * block_n + n] * softmax_scale : MOEMLA_NEG_INF;
                Ss[r * block_n + n] = s;
                mx = fmaxf(mx, s);
            }
            const float m_new = moemla_warp_max(mx);
            const bool none = m_new == MOEMLA_NEG_INF;
            float sum = 0.0f;
            for (int n = lane; n < block_n; n += MOEMLA_WARP_SIZE) {
                const float s = Ss[r * block_n + n];
                const float p = (none || s == MOEMLA_NEG_INF) ? 0.0f : expf(s - m_new);
                Ss[r * block_n + n] = p;
                if (use_mma) moemla_store(Ps + r * ps_stride + n, p);
                sum += p;
            }
            sum = moemla_warp_sum(sum);
            if (lane == 0) {
                const float alpha = none ? 1.0f : expf(m_old - m_new);
                m_s[r] = m_new;
                l_s[r] = l_s[r] * alpha + sum;
                alpha_s[r] = alpha;
            }
        }
        __syncthreads();

        // (d) O = O * alpha + P V (V = the first d_v columns of the staged rows).
        done = false;
#if MOEMLA_HAS_MMA_SYNC
        if constexpr (MMA16) {
            if (use_mma) {
                const int g = lane >> 2, t = lane & 3;
                for (int f = warp; f < os_stride / 8; f += nwarps) {
                    const int col = f * 8 + 2 * t;
                    float acc[4] = {Os[g * os_stride + col] * alpha_s[g],
                                    Os[g * os_stride + col + 1] * alpha_s[g],
                                    Os[(g + 8) * os_stride + col] * alpha_s[g + 8],
                                    Os[(g + 8) * os_stride + col + 1] * alpha_s[g + 8]};
                    for (int ks = 0; ks < block_n / 16; ++ks) {
                        const T* a0 = Ps + g * ps_stride + ks * 16 + 2 * t;
                        const T* a1 = a0 + 8 * ps_stride;
                        const moemla_u32 a[4] = {moemla_pair(a0), moemla_pair(a1), moemla_pair(a0 + 8),
                                                 moemla_pair(a1 + 8)};
                        // B[k][n] = V[ks*16 + k][f*8 + n]: k pairs are rows apart, packed by hand.
                        const T* v0 = Ks + (ks * 16 + 2 * t) * ks_stride + f * 8 + g;
                        const moemla_u32 bf[2] = {moemla_pack(v0, v0 + ks_stride),
                                                  moemla_pack(v0 + 8 * ks_stride, v0 + 9 * ks_stride)};
                        moemla_mma_16816(acc, a, bf, T());
                    }
                    Os[g * os_stride + col] = acc[0];
                    Os[g * os_stride + col + 1] = acc[1];
                    Os[(g + 8) * os_stride + col] = acc[2];
                    Os[(g + 8) * os_stride + col + 1] = acc[3];
                }
                done = true;
            }
        }
#endif
        if (!done) {
            for (int idx = tid; idx < block_q * os_stride; idx += nthreads) {
                const int r = idx / os_stride;
                const int c = idx % os_stride;
                if (c >= d_v) continue;
                float acc = Os[idx] * alpha_s[r];
                for (int n = 0; n < block_n; ++n) acc += Ss[r * block_n + n] * moemla_load(Ks + n * ks_stride + c);
                Os[idx] = acc;
            }
        }
        __syncthreads();
    }

    // Per-split results: o normalised by this split's sum, lse in natural log.
    for (int idx = tid; idx < block_q * d_v; idx += nthreads) {
        const int r = idx / d_v;
        const int c = idx % d_v;
        const int rg = tile_row(r);
        if (rg >= rows_total) continue;
        const int i = rg / group;
        const int h = kvh * group + rg % group;
        const moemla_i64 orow = ((moemla_i64)b * s_q + i) * h_q + h;
        const float l = l_s[r];
        o_part[((moemla_i64)split * out_rows + orow) * d_v + c] = l > 0.0f ? Os[r * os_stride + c] / l : 0.0f;
    }
    for (int r = tid; r < block_q; r += nthreads) {
        const int rg = tile_row(r);
        if (rg >= rows_total) continue;
        const int i = rg / group;
        const int h = kvh * group + rg % group;
        const moemla_i64 orow = ((moemla_i64)b * s_q + i) * h_q + h;
        const float l = l_s[r];
        lse_part[(moemla_i64)split * out_rows + orow] = l > 0.0f ? m_s[r] + logf(l) : MOEMLA_NEG_INF;
    }
}

// ---------------------------------------------------------------------------------------
// 3. Split combine, one block per output row (b, i, h)
// ---------------------------------------------------------------------------------------
// sink (mla_sparse_decode's attn_sink [Hq], or null): a row with a valid entry is scaled
// by 1 / (1 + exp(sink[h] - lse)); a row without one stays o = 0, lse = -inf.
template <typename T>
__device__ void moemla_mla_combine(const float* __restrict__ o_part, const float* __restrict__ lse_part,
                                   T* __restrict__ o, float* __restrict__ lse, int batch, int s_q,
                                   int h_q, int d_v, int num_splits, const float* __restrict__ sink = nullptr) {
    __shared__ float weight[MOEMLA_MLA_MAX_SPLITS];
    __shared__ float inv_sum;
    const moemla_i64 orow = blockIdx.x;
    const moemla_i64 out_rows = (moemla_i64)batch * s_q * h_q;
    if (threadIdx.x == 0) {
        float m = MOEMLA_NEG_INF;
        for (int s = 0; s < num_splits; ++s) m = fmaxf(m, lse_part[s * out_rows + orow]);
        float sum = 0.0f;
        for (int s = 0; s < num_splits; ++s) {
            const float ls = lse_part[s * out_rows + orow];
            const float w = (m == MOEMLA_NEG_INF || ls == MOEMLA_NEG_INF) ? 0.0f : expf(ls - m);
            weight[s] = w;
            sum += w;
        }
        const moemla_i64 b = orow / ((moemla_i64)s_q * h_q);
        const moemla_i64 rem = orow % ((moemla_i64)s_q * h_q);
        const moemla_i64 i = rem / h_q;
        const moemla_i64 h = rem % h_q;
        const float row_lse = sum > 0.0f ? m + logf(sum) : MOEMLA_NEG_INF;
        lse[(b * h_q + h) * s_q + i] = row_lse;
        float factor = 1.0f;
        if (sink != nullptr && sum > 0.0f) factor = 1.0f / (1.0f + expf(sink[h] - row_lse));
        inv_sum = sum > 0.0f ? factor / sum : 0.0f;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d_v; c += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < num_splits; ++s) {
            if (weight[s] != 0.0f) acc += weight[s] * o_part[(s * out_rows + orow) * d_v + c];
        }
        moemla_store(o + orow * d_v + c, acc * inv_sum);
    }
}

#define MOEMLA_MLA_ENTRIES(SFX, T)                                                               \
    extern "C" __global__ void moemla_mla_decode_##SFX(                                           \
        const T* q, const T* kv_cache, const int* block_table, const int* cache_seqlens,          \
        float* o_part, float* lse_part, int batch, int s_q, int h_q, int h_kv, int d_qk, int d_v, \
        int num_blocks, int block_size, int max_blocks, int causal, float softmax_scale,          \
        int num_splits, int block_q, int block_n) {                                               \
        moemla_mla_decode<T, T>(q, kv_cache, block_table, cache_seqlens, o_part, lse_part, batch, \
                                s_q, h_q, h_kv, d_qk, d_v, num_blocks, block_size, max_blocks,    \
                                causal, softmax_scale, num_splits, block_q, block_n);             \
    }                                                                                             \
    extern "C" __global__ void moemla_mla_decode_fp8_##SFX(                                       \
        const T* q, const unsigned char* kv_cache, const int* block_table,                       \
        const int* cache_seqlens, float* o_part, float* lse_part, int batch, int s_q, int h_q,    \
        int h_kv, int d_qk, int d_v, int num_blocks, int block_size, int max_blocks, int causal,  \
        float softmax_scale, int num_splits, int block_q, int block_n) {                          \
        moemla_mla_decode<T, unsigned char>(q, kv_cache, block_table, cache_seqlens, o_part,      \
                                            lse_part, batch, s_q, h_q, h_kv, d_qk, d_v,           \
                                            num_blocks, block_size, max_blocks, causal,           \
                                            softmax_scale, num_splits, block_q, block_n);         \
    }                                                                                             \
    extern "C" __global__ void moemla_mla_combine_##SFX(const float* o_part, const float* lse_part, \
                                                        T* o, float* lse, int batch, int s_q,     \
                                                        int h_q, int d_v, int num_splits) {       \
        moemla_mla_combine<T>(o_part, lse_part, o, lse, batch, s_q, h_q, d_v, num_splits);        \
    }

#define MOEMLA_MLA_SPARSE_ENTRIES(SFX, T)                                                          \
    extern "C" __global__ void moemla_mla_sparse_decode_##SFX(                                     \
        const T* q, const T* kv_cache, const int* indices, const int* topk_length, float* o_part,  \
        float* lse_part, int batch, int s_q, int h_q, int d_qk, int d_v, int num_blocks,           \
        int block_size, int topk, float softmax_scale, int num_splits, int block_q, int block_n) {  \
        moemla_mla_decode<T, T, true>(q, kv_cache, nullptr, nullptr, o_part, lse_part, batch, s_q, \
                                      h_q, 1, d_qk, d_v, num_blocks, block_size, 0, 0,             \
                                      softmax_scale, num_splits, block_q, block_n, indices,        \
                                      topk_length, topk);                                          \
    }                                                                                              \
    extern "C" __global__ void moemla_mla_sparse_decode_fp8_##SFX(                                 \
        const T* q, const unsigned char* kv_cache, const int* indices, const int* topk_length,     \
        float* o_part, float* lse_part, int batch, int s_q, int h_q, int d_qk, int d_v,            \
        int num_blocks, int block_size, int topk, float softmax_scale, int num_splits,             \
        int block_q, int block_n) {                                                                \
        moemla_mla_decode<T, unsigned char, true>(q, kv_cache, nullptr, nullptr, o_part, lse_part, \
                                                  batch, s_q, h_q, 1, d_qk, d_v, num_blocks,       \
                                                  block_size, 0, 0, softmax_scale, num_splits,     \
                                                  block_q, block_n, indices, topk_length, topk);   \
    }                                                                                              \
    extern "C" __global__ void moemla_mla_sparse_combine_##SFX(                                    \
        const float* o_part, const float* lse_part, const float* attn_sink, T* o, float* lse,      \
        int batch, int s_q, int h_q, int d_v, int num_splits) {                                    \
        moemla_mla_combine<T>(o_part, lse_part, o, lse, batch, s_q, h_q, d_v, num_splits,          \
                              attn_sink);                                                          \
    }

MOEMLA_MLA_ENTRIES(f32, float)
MOEMLA_MLA_ENTRIES(f16, moemla_f16)
MOEMLA_MLA_ENTRIES(bf16, moemla_bf16)
MOEMLA_MLA_SPARSE_ENTRIES(f32, float)
MOEMLA_MLA_SPARSE_ENTRIES(f16, moemla_f16)
MOEMLA_MLA_SPARSE_ENTRIES(bf16, moemla_bf16)
