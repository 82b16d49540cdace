// moe_experts.cu — fused routed experts (see kernels/README.md for the launch contract).
// Prepended by the backend with kernels/common/moemla_device.h.
//
//   1. moemla_moe_align      count rows per expert, pad each segment to MOEMLA_TM, scatter
//   2. moemla_moe_gate_up_*  act = silu(x W1^T) * (x W3^T), one 64x64 tile per block
//   3. moemla_moe_down_*     yslot = act W2^T (f32)
//   4. moemla_moe_combine_*  y[t] = sum_j w[t,j] yslot[row of (t,j)], in slot order
// Deterministic: no float atomics; every output element has one fixed summation order.

#define MOEMLA_TM 64          // rows per tile (segments are padded to it)
#define MOEMLA_TN 64          // output columns per tile
#define MOEMLA_TK 32          // reduction step staged in shared memory
#define MOEMLA_SK (MOEMLA_TK + 8)  // shared row stride in elements (conflict-free fragments)
#define MOEMLA_ACC 32         // accumulators per thread per B operand (both paths)

// ---------------------------------------------------------------------------------------
// 1. Align / permute
// ---------------------------------------------------------------------------------------
// A slot contributes nothing when its id is -1 or its weight is 0 (+0 or -0): it gets no
// row, so its expert is never computed for it (0 * NaN never happens). Ids outside
// [-1, E) are flagged and treated as -1; a NaN weight is data and contributes NaN.
extern "C" __global__ void moemla_moe_align(const int* __restrict__ topk_ids,
                                            const float* __restrict__ topk_weights, int slots,
                                            int experts, int max_tiles,
                                            int* __restrict__ sorted_rows,
                                            int* __restrict__ slot_pos,
                                            int* __restrict__ tile_expert, int* __restrict__ meta,
                                            moemla_u64* __restrict__ err) {
    MOEMLA_DYN_SMEM(smem);
    int* cnt = reinterpret_cast<int*>(smem);  // [E] rows per expert, later the scatter cursor
    int* row_off = cnt + experts;             // [E] first row of each segment
    int* tile_off = row_off + experts;        // [E] first tile of each segment
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const int max_rows = max_tiles * MOEMLA_TM;

    for (int e = tid; e < experts; e += nthreads) cnt[e] = 0;
    for (int r = tid; r < max_rows; r += nthreads) sorted_rows[r] = -1;
    __syncthreads();

    for (int s = tid; s < slots; s += nthreads) {
        int id = topk_ids[s];
        if (id < -1 || id >= experts) {
            moemla_flag_index(err, s, id);
        } else if (id >= 0 && topk_weights[s] != 0.0f) {
            atomicAdd(&cnt[id], 1);
        }
    }
    __syncthreads();

    if (tid == 0) {
        int rows = 0, tiles = 0;
        for (int e = 0; e < experts; ++e) {
            int nt = (cnt[e] + MOEMLA_TM - 1) / MOEMLA_TM;
            row_off[e] = rows;
            tile_off[e] = tiles;
            tiles += nt;
            rows += nt * MOEMLA_TM;
        }
        meta[0] = tiles;
    }
    __syncthreads();

    for (int e = tid; e < experts; e += nthreads) {
        int nt = (cnt[e] + MOEMLA_TM - 1) / MOEMLA_TM;
        for (int i = 0; i < nt; ++i) {
            int tile = tile_off[e] + i;
            if (tile < max_tiles) tile_expert[tile] = e;
        }
        cnt[e] = row_off[e];
    }
    __syncthreads();

    for (int s = tid; s < slots; s += nthreads) {
        int id = topk_ids[s];
        int pos = -1;
        if (id >= 0 && id < experts && topk_weights[s] != 0.0f) {
            int p = atomicAdd(&cnt[id], 1);
            if (p < max_rows) {
                sorted_rows[p] = s;
                pos = p;
            }
        }
        slot_pos[s] = pos;
    }
}

// ---------------------------------------------------------------------------------------
// Tile machinery shared by the two GEMMs
// ---------------------------------------------------------------------------------------

// Threads per GEMM block: the accumulator layouts below assume exactly four 32-lane warps
// (tensor-core path) or 16 x 8 threads (portable path).
#define MOEMLA_GEMM_THREADS 128

// One thread's share of a ROWS x MOEMLA_TK tile, held in registers between the global
// load (fetch) and the shared-memory store (put), so the next tile's loads are in flight
// while the current tile is multiplied.
template <typename T, int ROWS>
struct moemla_tile_regs {
    static constexpr int VEC = 16 / (int)sizeof(T);
    static constexpr int CHUNKS = MOEMLA_TK / VEC;  // 16-byte chunks per row
    static constexpr int PER_THREAD = ROWS * CHUNKS / MOEMLA_GEMM_THREADS;
    union Chunk {
        moemla_vec16 v;
        T e[VEC];
    };
    Chunk chunk[PER_THREAD];
};

// Loads rows [0, ROWS) x columns [k0, k0 + MOEMLA_TK), zero where a row is absent
// (row_ptr returns nullptr) or a column is >= K. `vec_ok`: every row pointer plus a
// multiple of 16 bytes is 16-byte aligned (K a multiple of the vector length).
template <typename T, int ROWS, typename RowFn>
__device__ __forceinline__ void moemla_tile_fetch(moemla_tile_regs<T, ROWS>& regs, RowFn row_ptr, int k0,
                                                  int K, bool vec_ok) {
    using R = moemla_tile_regs<T, ROWS>;
#pragma unroll
    for (int s = 0; s < R::PER_THREAD; ++s) {
        const int idx = threadIdx.x + s * MOEMLA_GEMM_THREADS;
        const int r = idx / R::CHUNKS;
        const int k = k0 + (idx % R::CHUNKS) * R::VEC;
        const T* src = row_ptr(r);
        if (src != nullptr && vec_ok && k + R::VEC <= K) {
            regs.chunk[s].v = *reinterpret_cast<const moemla_vec16*>(src + k);
        } else {
            for (int v = 0; v < R::VEC; ++v) {
                if (src != nullptr && k + v < K) {
                    regs.chunk[s].e[v] = src[k + v];
                } else {
                    moemla_store(&regs.chunk[s].e[v], 0.0f);
                }
            }
        }
    }
}

// Stores the fetched chunks into the shared tile (row stride MOEMLA_SK).
template <typename T, int ROWS>
__device__ __forceinline__ void moemla_tile_put(T* dst, const moemla_tile_regs<T, ROWS>& regs) {
    using R = moemla_tile_regs<T, ROWS>;
#pragma unroll
    for (int s = 0; s < R::PER_THREAD; ++s) {
        const int idx = threadIdx.x + s * MOEMLA_GEMM_THREADS;
        const int r = idx / R::CHUNKS;
        const int c = (idx % R::CHUNKS) * R::VEC;
        *reinterpret_cast<moemla_vec16*>(dst + r * MOEMLA_SK + c) = regs.chunk[s].v;
    }
}

// Tile coordinates (row, col) of accumulator `idx` of this thread.
template <bool MMA>
__device__ __forceinline__ void moemla_acc_coord(int idx, int& row, int& col) {
    const int tid = threadIdx.x;
    if (MMA) {
        // idx = (mi * 4 + ni) * 4 + v; warp tile 32 x 32 at (wm, wn) of a 2 x 2 grid.
        const int lane = tid % 32, warp = tid / 32;
        const int g = lane >> 2, t = lane & 3;
        const int v = idx & 3, ni = (idx >> 2) & 3, mi = idx >> 4;
        row = (warp >> 1) * 32 + mi * 16 + g + ((v >> 1) << 3);
        col = (warp & 1) * 32 + ni * 8 + 2 * t + (v & 1);
    } else {
        // idx = i * 8 + j; thread (ty, tx) of 16 x 8 owns rows ty*4+i, columns tx+8j.
        const int ty = tid / 8, tx = tid % 8;
        row = ty * 4 + (idx >> 3);
        col = tx + 8 * (idx & 7);
    }
}

// acc[b] += A (TM x TK) * B[b]^T (TN x TK) for NB staged B tiles.
template <typename T, int NB, bool MMA>
__device__ __forceinline__ void moemla_tile_step(float (&acc)[NB][MOEMLA_ACC], const T* As,
                                                 const T* const (&Bs)[NB]) {
#if MOEMLA_HAS_MMA_SYNC
    if constexpr (MMA) {
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
        const int g = lane >> 2, t = lane & 3;
        const int wm = warp >> 1, wn = warp & 1;
#pragma unroll
        for (int ks = 0; ks < MOEMLA_TK / 16; ++ks) {
            moemla_u32 a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const T* a0 = As + (wm * 32 + mi * 16 + g) * MOEMLA_SK + ks * 16 + 2 * t;
                const T* a1 = a0 + 8 * MOEMLA_SK;
                a[mi][0] = moemla_pair(a0);
                a[mi][1] = moemla_pair(a1);
                a[mi][2] = moemla_pair(a0 + 8);
                a[mi][3] = moemla_pair(a1 + 8);
            }
#pragma unroll
            for (int bt = 0; bt < NB; ++bt) {
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    const T* b0 = Bs[bt] + (wn * 32 + ni * 8 + g) * MOEMLA_SK + ks * 16 + 2 * t;
                    moemla_u32 b[2];
                    b[0] = moemla_pair(b0);
                    b[1] = moemla_pair(b0 + 8);
#pragma unroll
                    for (int mi = 0; mi < 2; ++mi) {
                        moemla_mma_16816(&acc[bt][(mi * 4 + ni) * 4], a[mi], b, T());
                    }
                }
            }
        }
        return;
    }
#endif
    const int ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    for (int kk = 0; kk < MOEMLA_TK; ++kk) {
        float a[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = moemla_load(As + (ty * 4 + i) * MOEMLA_SK + kk);
#pragma unroll
        for (int bt = 0; bt < NB; ++bt) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float b = moemla_load(Bs[bt] + (tx + 8 * j) * MOEMLA_SK + kk);
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[bt][i * 8 + j] += a[i] * b;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Gate/up GEMM with SwiGLU epilogue
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ void moemla_moe_gate_up(const T* __restrict__ x, const T* __restrict__ w13,
                                   const int* __restrict__ sorted_rows,
                                   const int* __restrict__ tile_expert,
                                   const int* __restrict__ meta, T* __restrict__ act, int hidden,
                                   int inter, int top_k) {
    constexpr bool MMA = MOEMLA_HAS_MMA_SYNC && moemla_is_16bit<T>::value;
    __shared__ MOEMLA_ALIGN16 T As[MOEMLA_TM * MOEMLA_SK];
    __shared__ MOEMLA_ALIGN16 T Bg[MOEMLA_TN * MOEMLA_SK];
    __shared__ MOEMLA_ALIGN16 T Bu[MOEMLA_TN * MOEMLA_SK];
    __shared__ int tok[MOEMLA_TM];

    const int tile = blockIdx.x;
    if (tile >= meta[0]) return;  // uniform per block, before any barrier
    const int e = tile_expert[tile];
    const int n0 = blockIdx.y * MOEMLA_TN;
    const moemla_i64 row0 = (moemla_i64)tile * MOEMLA_TM;

    for (int r = threadIdx.x; r < MOEMLA_TM; r += blockDim.x) {
        int s = sorted_rows[row0 + r];
        tok[r] = s < 0 ? -1 : s / top_k;
    }
    __syncthreads();

    const T* w_gate = w13 + (moemla_i64)e * 2 * inter * hidden;
    auto a_row = [&](int r) -> const T* {
        return tok[r] < 0 ? nullptr : x + (moemla_i64)tok[r] * hidden;
    };
    auto g_row = [&](int r) -> const T* {
        return n0 + r < inter ? w_gate + (moemla_i64)(n0 + r) * hidden : nullptr;
    };
    auto u_row = [&](int r) -> const T* {
        return n0 + r < inter ? w_gate + (moemla_i64)(inter + n0 + r) * hidden : nullptr;
    };
    const bool vec_ok = hidden % (16 / (int)sizeof(T)) == 0;

    float acc[2][MOEMLA_ACC];
#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        acc[0][i] = 0.0f;
        acc[1][i] = 0.0f;
    }
    const T* const bs[2] = {Bg, Bu};
    moemla_tile_regs<T, MOEMLA_TM> ra;
    moemla_tile_regs<T, MOEMLA_TN> rg, ru;
    moemla_tile_fetch(ra, a_row, 0, hidden, vec_ok);
    moemla_tile_fetch(rg, g_row, 0, hidden, vec_ok);
    moemla_tile_fetch(ru, u_row, 0, hidden, vec_ok);
    for (int k0 = 0; k0 < hidden; k0 += MOEMLA_TK) {
        moemla_tile_put(As, ra);
        moemla_tile_put(Bg, rg);
        moemla_tile_put(Bu, ru);
        __syncthreads();
        if (k0 + MOEMLA_TK < hidden) {  // next tile's loads overlap this tile's math
            moemla_tile_fetch(ra, a_row, k0 + MOEMLA_TK, hidden, vec_ok);
            moemla_tile_fetch(rg, g_row, k0 + MOEMLA_TK, hidden, vec_ok);
            moemla_tile_fetch(ru, u_row, k0 + MOEMLA_TK, hidden, vec_ok);
        }
        moemla_tile_step<T, 2, MMA>(acc, As, bs);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        int r, c;
        moemla_acc_coord<MMA>(i, r, c);
        if (n0 + c < inter) {
            const float g = acc[0][i];
            const float h = g / (1.0f + expf(-g)) * acc[1][i];
            moemla_store(act + (row0 + r) * inter + n0 + c, h);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. Down GEMM (f32 per-slot rows)
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ void moemla_moe_down(const T* __restrict__ act, const T* __restrict__ w2,
                                const int* __restrict__ sorted_rows,
                                const int* __restrict__ tile_expert, const int* __restrict__ meta,
                                float* __restrict__ yslot, int hidden, int inter) {
    constexpr bool MMA = MOEMLA_HAS_MMA_SYNC && moemla_is_16bit<T>::value;
    __shared__ MOEMLA_ALIGN16 T As[MOEMLA_TM * MOEMLA_SK];
    __shared__ MOEMLA_ALIGN16 T Bd[MOEMLA_TN * MOEMLA_SK];

    const int tile = blockIdx.x;
    if (tile >= meta[0]) return;  // uniform per block, before any barrier
    const int e = tile_expert[tile];
    const int n0 = blockIdx.y * MOEMLA_TN;
    const moemla_i64 row0 = (moemla_i64)tile * MOEMLA_TM;

    const T* w_down = w2 + (moemla_i64)e * hidden * inter;
    auto a_row = [&](int r) -> const T* { return act + (row0 + r) * inter; };
    auto b_row = [&](int r) -> const T* {
        return n0 + r < hidden ? w_down + (moemla_i64)(n0 + r) * inter : nullptr;
    };
    const bool vec_ok = inter % (16 / (int)sizeof(T)) == 0;

    float acc[1][MOEMLA_ACC];
#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) acc[0][i] = 0.0f;
    const T* const bs[1] = {Bd};
    moemla_tile_regs<T, MOEMLA_TM> ra;
    moemla_tile_regs<T, MOEMLA_TN> rb;
    moemla_tile_fetch(ra, a_row, 0, inter, vec_ok);
    moemla_tile_fetch(rb, b_row, 0, inter, vec_ok);
    for (int k0 = 0; k0 < inter; k0 += MOEMLA_TK) {
        moemla_tile_put(As, ra);
        moemla_tile_put(Bd, rb);
        __syncthreads();
        if (k0 + MOEMLA_TK < inter) {  // next tile's loads overlap this tile's math
            moemla_tile_fetch(ra, a_row, k0 + MOEMLA_TK, inter, vec_ok);
            moemla_tile_fetch(rb, b_row, k0 + MOEMLA_TK, inter, vec_ok);
        }
        moemla_tile_step<T, 1, MMA>(acc, As, bs);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        int r, c;
        moemla_acc_coord<MMA>(i, r, c);
        if (n0 + c < hidden && sorted_rows[row0 + r] >= 0) {
            yslot[(row0 + r) * hidden + n0 + c] = acc[0][i];
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Weighted combine, one block per token, slots summed in order
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ void moemla_moe_combine(const float* __restrict__ yslot, const int* __restrict__ slot_pos,
                                   const float* __restrict__ topk_weights, T* __restrict__ y,
                                   int hidden, int top_k) {
    const moemla_i64 t = blockIdx.x;
    for (int n = threadIdx.x; n < hidden; n += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < top_k; ++j) {
            const int p = slot_pos[t * top_k + j];
            if (p >= 0) acc += topk_weights[t * top_k + j] * yslot[(moemla_i64)p * hidden + n];
        }
        moemla_store(y + t * hidden + n, acc);
    }
}

#define MOEMLA_EXPERTS_ENTRIES(SFX, T)                                                          \
    extern "C" __global__ void moemla_moe_gate_up_##SFX(                                         \
        const T* x, const T* w13, const int* sorted_rows, const int* tile_expert,                \
        const int* meta, T* act, int hidden, int inter, int top_k) {                             \
        moemla_moe_gate_up<T>(x, w13, sorted_rows, tile_expert, meta, act, hidden, inter,        \
                              top_k);                                                            \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_down_##SFX(                                            \
        const T* act, const T* w2, const int* sorted_rows, const int* tile_expert,               \
        const int* meta, float* yslot, int hidden, int inter) {                                  \
        moemla_moe_down<T>(act, w2, sorted_rows, tile_expert, meta, yslot, hidden, inter);       \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_combine_##SFX(const float* yslot, const int* slot_pos, \
                                                        const float* topk_weights, T* y,         \
                                                        int hidden, int top_k) {                 \
        moemla_moe_combine<T>(yslot, slot_pos, topk_weights, y, hidden, top_k);                  \
    }

MOEMLA_EXPERTS_ENTRIES(f32, float)
MOEMLA_EXPERTS_ENTRIES(f16, moemla_f16)
MOEMLA_EXPERTS_ENTRIES(bf16, moemla_bf16)
