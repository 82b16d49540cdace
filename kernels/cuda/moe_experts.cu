// moe_experts.cu — fused routed experts (see kernels/README.md for the launch contract).
// Prepended by the backend with kernels/common/moemla_device.h.
//
//   1. moemla_moe_align      count rows per expert, pad each segment to MOEMLA_TM, scatter
//   2. moemla_moe_gate_up_*  act = silu(x W1^T) * (x W3^T), one 64x64 tile per block
//                            (optional SwiGLU clamp; _w8a16 / _w8a8: FP8 weights, FP8 x)
//   3. moemla_moe_down_*     yslot = act W2^T (f32) (_w8a16 / _w8a8 likewise)
//   (w8a8: moemla_moe_quant_* quantizes x before 2 and act before 3; on sm_89+ the w8a8
//   GEMMs multiply the FP8 codes on tensor cores, mma.sync m16n8k32 e4m3, elsewhere they
//   decode them into run-dtype tiles first)
//   4. moemla_moe_combine_*  y[t] = sum_j w[t,j] yslot[row of (t,j)], in slot order
// Shared experts (contract v2, run-dtype weights only): moemla_moe_shared_rows maps every
// token to one row of each shared expert's segment (S segments of ceil(T/64) tiles, top_k
// 1), the same gate/up and down kernels run over them with the shared weights (Is), and
// moemla_moe_combine_shared_* adds each shared expert's row with weight 1 after the
// routed slots, s = 0..S-1, before y's one rounding.
// Deterministic: no float atomics; every output element has one fixed summation order.

#define MOEMLA_TM 64          // rows per tile (segments are padded to it)
#define MOEMLA_TN 64          // output columns per tile
#define MOEMLA_TK 32          // reduction step staged in shared memory
#define MOEMLA_SK (MOEMLA_TK + 8)  // shared row stride in elements (conflict-free fragments)
// Row stride in bytes of the FP8 code tiles (w8a8 on FP8 tensor cores): 12 words, so the
// 4-byte fragment loads of rows g = 0..7 fall in distinct bank quads; a multiple of 16 for
// the 16-byte tile stores.
#define MOEMLA_SK8 (MOEMLA_TK + 16)
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

// Shared experts' rows: S segments of `seg_tiles` tiles, segment s for shared expert s,
// row r of a segment holding token r (-1 past T). Grid (S * seg_tiles, 1, 1), block
// (MOEMLA_TM, 1, 1). The GEMMs read them with top_k 1 (row value = token).
extern "C" __global__ void moemla_moe_shared_rows(int tokens, int seg_tiles, int* __restrict__ rows,
                                                  int* __restrict__ tile_expert,
                                                  int* __restrict__ meta) {
    const int tile = blockIdx.x;
    const int r = (tile % seg_tiles) * MOEMLA_TM + threadIdx.x;
    if (threadIdx.x < MOEMLA_TM) rows[(moemla_i64)tile * MOEMLA_TM + threadIdx.x] = r < tokens ? r : -1;
    if (threadIdx.x == 0) tile_expert[tile] = tile / seg_tiles;
    if (tile == 0 && threadIdx.x == 0) meta[0] = gridDim.x;
}

// ---------------------------------------------------------------------------------------
// Tile machinery shared by the two GEMMs
// ---------------------------------------------------------------------------------------

// Threads per GEMM block: the accumulator layouts below assume exactly four 32-lane warps
// (tensor-core path) or 16 x 8 threads (portable path).
#define MOEMLA_GEMM_THREADS 128

// X if B, else Y (no <type_traits> under NVRTC).
template <bool B, typename X, typename Y>
struct moemla_select {
    using type = X;
};
template <typename X, typename Y>
struct moemla_select<false, X, Y> {
    using type = Y;
};

// How a GEMM with run dtype T, A operand TA and weights TW stages its tiles:
//   FP8_MMA  both operands FP8 on a target with FP8 tensor cores (sm_89+): the shared tiles
//            hold the codes as they are (TS = moemla_fp8, row stride MOEMLA_SK8);
//   MMA      the tensor-core accumulator layout (FP8_MMA, or 16-bit T with mma.sync);
//   TS       otherwise T, FP8 codes decoded into it exactly (row stride MOEMLA_SK).
template <typename T, typename TA, typename TW>
struct moemla_gemm_path {
    static constexpr bool FP8_MMA = MOEMLA_HAS_MMA_FP8 && moemla_is_fp8<TA>::value && moemla_is_fp8<TW>::value;
    static constexpr bool MMA = FP8_MMA || (MOEMLA_HAS_MMA_SYNC && moemla_is_16bit<T>::value);
    using TS = typename moemla_select<FP8_MMA, moemla_fp8, T>::type;
    static constexpr int SK = FP8_MMA ? MOEMLA_SK8 : MOEMLA_SK;
};

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

// Stores the fetched chunks into the shared tile (row stride MOEMLA_SK8 for FP8 code
// tiles, else MOEMLA_SK), decoding FP8 codes when the tile's type TS is not FP8 (exact:
// every e4m3 value is a TS value).
template <typename TS, typename TG, int ROWS>
__device__ __forceinline__ void moemla_tile_put(TS* dst, const moemla_tile_regs<TG, ROWS>& regs) {
    using R = moemla_tile_regs<TG, ROWS>;
    constexpr int SK = moemla_is_fp8<TS>::value ? MOEMLA_SK8 : MOEMLA_SK;
#pragma unroll
    for (int s = 0; s < R::PER_THREAD; ++s) {
        const int idx = threadIdx.x + s * MOEMLA_GEMM_THREADS;
        const int r = idx / R::CHUNKS;
        const int c = (idx % R::CHUNKS) * R::VEC;
        if constexpr (moemla_is_fp8<TG>::value && !moemla_is_fp8<TS>::value) {
#pragma unroll
            for (int v = 0; v < R::VEC; ++v) moemla_store(dst + r * SK + c + v, moemla_load(&regs.chunk[s].e[v]));
        } else {
            *reinterpret_cast<moemla_vec16*>(dst + r * SK + c) = regs.chunk[s].v;
        }
    }
}

// FP8 GEMMs (contract v2): the A (activation, w8a8) and B (weight) tiles hold codes,
// decoded exactly into T or (w8a8 on sm_89+) as they are for the FP8 tensor cores, so a
// k-tile's products are exact; their f32 sums over one 128-wide k block (four k-tiles: a
// k-tile never straddles a block) are then multiplied by the block's scales, A's per row
// and B's per output column (DeepGEMM's promotion). Staged per k block in shared memory
// by the threads that put the tiles.
template <int NB>
struct moemla_fp8_scales {
    float a[MOEMLA_TM];      // per row (1 without activation quantization)
    float b[NB][MOEMLA_TN];  // per output column and B operand (1 without FP8 weights)
};

// acc[b][i] += part[b][i] * scale(row, col), then part = 0.
template <int NB, bool MMA>
__device__ __forceinline__ void moemla_fp8_flush(float (&acc)[NB][MOEMLA_ACC], float (&part)[NB][MOEMLA_ACC],
                                                 const moemla_fp8_scales<NB>& sc) {
#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        int r, c;
        moemla_acc_coord<MMA>(i, r, c);
#pragma unroll
        for (int bt = 0; bt < NB; ++bt) {
            acc[bt][i] += part[bt][i] * (sc.a[r] * sc.b[bt][c]);
            part[bt][i] = 0.0f;
        }
    }
}

// SwiGLU with the optional clamp (contract v2 swiglu_limit c; +inf = none):
// silu(min(g, c)) * clamp(u, -c, c). Selects, so a NaN g or u stays NaN.
__device__ __forceinline__ float moemla_swiglu(float g, float u, float limit) {
    g = g > limit ? limit : g;
    u = u > limit ? limit : (u < -limit ? -limit : u);
    return g / (1.0f + expf(-g)) * u;
}

// acc[b] += A (TM x TK) * B[b]^T (TN x TK) for NB staged B tiles. T: the tiles' type:
// moemla_fp8 codes on the FP8 tensor cores (mma.sync m16n8k32 e4m3), 16-bit with MMA on
// mma.sync m16n8k16, else the portable loop.
template <typename T, int NB, bool MMA>
__device__ __forceinline__ void moemla_tile_step(float (&acc)[NB][MOEMLA_ACC], const T* As,
                                                 const T* const (&Bs)[NB]) {
    static_assert(MOEMLA_HAS_MMA_FP8 || !moemla_is_fp8<T>::value, "FP8 code tiles need FP8 tensor cores");
    static_assert(MOEMLA_HAS_MMA_SYNC || !MMA, "the MMA layout needs mma.sync");
    if constexpr (moemla_is_fp8<T>::value) {
#if MOEMLA_HAS_MMA_FP8
        static_assert(MOEMLA_TK == 32, "one m16n8k32 per warp tile and k-tile");
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
        const int g = lane >> 2, t = lane & 3;
        const int wm = warp >> 1, wn = warp & 1;
        moemla_u32 a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const moemla_fp8* a0 = As + (wm * 32 + mi * 16 + g) * MOEMLA_SK8 + 4 * t;
            const moemla_fp8* a1 = a0 + 8 * MOEMLA_SK8;
            a[mi][0] = moemla_quad(a0);
            a[mi][1] = moemla_quad(a1);
            a[mi][2] = moemla_quad(a0 + 16);
            a[mi][3] = moemla_quad(a1 + 16);
        }
#pragma unroll
        for (int bt = 0; bt < NB; ++bt) {
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const moemla_fp8* b0 = Bs[bt] + (wn * 32 + ni * 8 + g) * MOEMLA_SK8 + 4 * t;
                moemla_u32 b[2];
                b[0] = moemla_quad(b0);
                b[1] = moemla_quad(b0 + 16);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) moemla_mma_16832_e4m3(&acc[bt][(mi * 4 + ni) * 4], a[mi], b);
            }
        }
#endif
    } else if constexpr (MMA) {
#if MOEMLA_HAS_MMA_SYNC
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
#endif
    } else {
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
}

// ---------------------------------------------------------------------------------------
// 2. Gate/up GEMM with SwiGLU epilogue
// ---------------------------------------------------------------------------------------
// TA: the A operand's storage (T, or moemla_fp8 codes of x quantized per token and 128
// channels, with scales xs [T, ceil(H/128)]). TW: the weights' (T, or moemla_fp8 codes
// with block scales w13s [E, ceil(2I/128), ceil(H/128)]). TO: act's (T; f32 for w8a8, so
// that `a` is quantized from its f32 value as the contract says).
template <typename T, typename TA, typename TW, typename TO>
__device__ __forceinline__ void moemla_moe_gate_up(const TA* __restrict__ x, const float* __restrict__ xs,
                                   const TW* __restrict__ w13, const float* __restrict__ w13s,
                                   const int* __restrict__ sorted_rows,
                                   const int* __restrict__ tile_expert,
                                   const int* __restrict__ meta, TO* __restrict__ act, int hidden,
                                   int inter, int top_k, float swiglu_limit) {
    using Path = moemla_gemm_path<T, TA, TW>;
    using TS = typename Path::TS;
    constexpr bool MMA = Path::MMA;
    constexpr bool FP8 = moemla_is_fp8<TA>::value || moemla_is_fp8<TW>::value;
    __shared__ MOEMLA_ALIGN16 TS As[MOEMLA_TM * Path::SK];
    __shared__ MOEMLA_ALIGN16 TS Bg[MOEMLA_TN * Path::SK];
    __shared__ MOEMLA_ALIGN16 TS Bu[MOEMLA_TN * Path::SK];
    __shared__ int tok[MOEMLA_TM];
    __shared__ moemla_fp8_scales<2> sc;

    const int tile = blockIdx.x;
    if (tile >= meta[0]) return;  // uniform per block, before any barrier
    const int e = tile_expert[tile];
    const int n0 = blockIdx.y * MOEMLA_TN;
    const moemla_i64 row0 = (moemla_i64)tile * MOEMLA_TM;
    const int kblocks = (hidden + 127) / 128;
    const int nblocks13 = (2 * inter + 127) / 128;

    for (int r = threadIdx.x; r < MOEMLA_TM; r += blockDim.x) {
        int s = sorted_rows[row0 + r];
        tok[r] = s < 0 ? -1 : s / top_k;
    }
    __syncthreads();

    const TW* w_gate = w13 + (moemla_i64)e * 2 * inter * hidden;
    auto a_row = [&](int r) -> const TA* {
        return tok[r] < 0 ? nullptr : x + (moemla_i64)tok[r] * hidden;
    };
    auto g_row = [&](int r) -> const TW* {
        return n0 + r < inter ? w_gate + (moemla_i64)(n0 + r) * hidden : nullptr;
    };
    auto u_row = [&](int r) -> const TW* {
        return n0 + r < inter ? w_gate + (moemla_i64)(inter + n0 + r) * hidden : nullptr;
    };
    const bool vec_a = hidden % (16 / (int)sizeof(TA)) == 0;
    const bool vec_w = hidden % (16 / (int)sizeof(TW)) == 0;

    float acc[2][MOEMLA_ACC];
    float part[FP8 ? 2 : 1][FP8 ? MOEMLA_ACC : 1];
#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        acc[0][i] = 0.0f;
        acc[1][i] = 0.0f;
        if constexpr (FP8) {
            part[0][i] = 0.0f;
            part[1][i] = 0.0f;
        }
    }
    const TS* const bs[2] = {Bg, Bu};
    moemla_tile_regs<TA, MOEMLA_TM> ra;
    moemla_tile_regs<TW, MOEMLA_TN> rg, ru;
    moemla_tile_fetch(ra, a_row, 0, hidden, vec_a);
    moemla_tile_fetch(rg, g_row, 0, hidden, vec_w);
    moemla_tile_fetch(ru, u_row, 0, hidden, vec_w);
    for (int k0 = 0; k0 < hidden; k0 += MOEMLA_TK) {
        moemla_tile_put(As, ra);
        moemla_tile_put(Bg, rg);
        moemla_tile_put(Bu, ru);
        if constexpr (FP8) {
            if (k0 % 128 == 0) {  // this k block's scales
                const int kb = k0 / 128;
                for (int i = threadIdx.x; i < MOEMLA_TM; i += blockDim.x) {
                    float a = 1.0f;
                    if constexpr (moemla_is_fp8<TA>::value) {
                        if (tok[i] >= 0) a = xs[(moemla_i64)tok[i] * kblocks + kb];
                    }
                    sc.a[i] = a;
                }
                for (int c = threadIdx.x; c < MOEMLA_TN; c += blockDim.x) {
                    float g = 1.0f, u = 1.0f;
                    if constexpr (moemla_is_fp8<TW>::value) {
                        if (n0 + c < inter) {
                            const moemla_i64 base = (moemla_i64)e * nblocks13;
                            g = w13s[(base + (n0 + c) / 128) * kblocks + kb];
                            u = w13s[(base + (inter + n0 + c) / 128) * kblocks + kb];
                        }
                    }
                    sc.b[0][c] = g;
                    sc.b[1][c] = u;
                }
            }
        }
        __syncthreads();
        if (k0 + MOEMLA_TK < hidden) {  // next tile's loads overlap this tile's math
            moemla_tile_fetch(ra, a_row, k0 + MOEMLA_TK, hidden, vec_a);
            moemla_tile_fetch(rg, g_row, k0 + MOEMLA_TK, hidden, vec_w);
            moemla_tile_fetch(ru, u_row, k0 + MOEMLA_TK, hidden, vec_w);
        }
        if constexpr (FP8) {
            moemla_tile_step<TS, 2, MMA>(part, As, bs);
            if ((k0 + MOEMLA_TK) % 128 == 0 || k0 + MOEMLA_TK >= hidden) moemla_fp8_flush<2, MMA>(acc, part, sc);
        } else {
            moemla_tile_step<TS, 2, MMA>(acc, As, bs);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        int r, c;
        moemla_acc_coord<MMA>(i, r, c);
        if (n0 + c < inter) moemla_store(act + (row0 + r) * inter + n0 + c, moemla_swiglu(acc[0][i], acc[1][i], swiglu_limit));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Down GEMM (f32 per-slot rows)
// ---------------------------------------------------------------------------------------
// TA: T (act), or moemla_fp8 codes of act quantized per row and 128 columns with scales
// as_ [rows, ceil(I/128)]. TW: T, or moemla_fp8 with block scales w2s [E, ceil(H/128),
// ceil(I/128)].
template <typename T, typename TA, typename TW>
__device__ __forceinline__ void moemla_moe_down(const TA* __restrict__ act, const float* __restrict__ as_,
                                const TW* __restrict__ w2, const float* __restrict__ w2s,
                                const int* __restrict__ sorted_rows,
                                const int* __restrict__ tile_expert, const int* __restrict__ meta,
                                float* __restrict__ yslot, int hidden, int inter) {
    using Path = moemla_gemm_path<T, TA, TW>;
    using TS = typename Path::TS;
    constexpr bool MMA = Path::MMA;
    constexpr bool FP8 = moemla_is_fp8<TA>::value || moemla_is_fp8<TW>::value;
    __shared__ MOEMLA_ALIGN16 TS As[MOEMLA_TM * Path::SK];
    __shared__ MOEMLA_ALIGN16 TS Bd[MOEMLA_TN * Path::SK];
    __shared__ moemla_fp8_scales<1> sc;

    const int tile = blockIdx.x;
    if (tile >= meta[0]) return;  // uniform per block, before any barrier
    const int e = tile_expert[tile];
    const int n0 = blockIdx.y * MOEMLA_TN;
    const moemla_i64 row0 = (moemla_i64)tile * MOEMLA_TM;
    const int kblocks = (inter + 127) / 128;
    const int nblocks = (hidden + 127) / 128;

    const TW* w_down = w2 + (moemla_i64)e * hidden * inter;
    auto a_row = [&](int r) -> const TA* { return act + (row0 + r) * inter; };
    auto b_row = [&](int r) -> const TW* {
        return n0 + r < hidden ? w_down + (moemla_i64)(n0 + r) * inter : nullptr;
    };
    const bool vec_a = inter % (16 / (int)sizeof(TA)) == 0;
    const bool vec_w = inter % (16 / (int)sizeof(TW)) == 0;

    float acc[1][MOEMLA_ACC];
    float part[1][FP8 ? MOEMLA_ACC : 1];
#pragma unroll
    for (int i = 0; i < MOEMLA_ACC; ++i) {
        acc[0][i] = 0.0f;
        if constexpr (FP8) part[0][i] = 0.0f;
    }
    const TS* const bs[1] = {Bd};
    moemla_tile_regs<TA, MOEMLA_TM> ra;
    moemla_tile_regs<TW, MOEMLA_TN> rb;
    moemla_tile_fetch(ra, a_row, 0, inter, vec_a);
    moemla_tile_fetch(rb, b_row, 0, inter, vec_w);
    for (int k0 = 0; k0 < inter; k0 += MOEMLA_TK) {
        moemla_tile_put(As, ra);
        moemla_tile_put(Bd, rb);
        if constexpr (FP8) {
            if (k0 % 128 == 0) {  // this k block's scales
                const int kb = k0 / 128;
                for (int i = threadIdx.x; i < MOEMLA_TM; i += blockDim.x) {
                    float a = 1.0f;
                    if constexpr (moemla_is_fp8<TA>::value) a = as_[(row0 + i) * kblocks + kb];
                    sc.a[i] = a;
                }
                for (int c = threadIdx.x; c < MOEMLA_TN; c += blockDim.x) {
                    float w = 1.0f;
                    if constexpr (moemla_is_fp8<TW>::value) {
                        if (n0 + c < hidden) w = w2s[((moemla_i64)e * nblocks + (n0 + c) / 128) * kblocks + kb];
                    }
                    sc.b[0][c] = w;
                }
            }
        }
        __syncthreads();
        if (k0 + MOEMLA_TK < inter) {  // next tile's loads overlap this tile's math
            moemla_tile_fetch(ra, a_row, k0 + MOEMLA_TK, inter, vec_a);
            moemla_tile_fetch(rb, b_row, k0 + MOEMLA_TK, inter, vec_w);
        }
        if constexpr (FP8) {
            moemla_tile_step<TS, 1, MMA>(part, As, bs);
            if ((k0 + MOEMLA_TK) % 128 == 0 || k0 + MOEMLA_TK >= inter) moemla_fp8_flush<1, MMA>(acc, part, sc);
        } else {
            moemla_tile_step<TS, 1, MMA>(acc, As, bs);
        }
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
// Activation quantization for w8a8 (contract v2 fp8_block128)
// ---------------------------------------------------------------------------------------
// Per row and group of 128 columns (the last one partial): amax = max(max|v|, 1e-4) (NaN
// ignored, as IEEE maxNum does), sc = amax / 448 (f32 division; ue8m0: 2^ceil(log2 sc)),
// codes[row, c] = e4m3(v / sc), scales[row, group] = sc. Grid (rows, ceil(cols / 128), 1),
// block (128, 1, 1). With use_meta, rows at or past meta[0] * 64 (unused tiles) return.
#define MOEMLA_QUANT_THREADS 128
template <typename T>
__device__ __forceinline__ void moemla_moe_quant(const T* __restrict__ src, int cols, const int* __restrict__ meta,
                                 int use_meta, moemla_fp8* __restrict__ codes,
                                 float* __restrict__ scales, int ue8m0) {
    __shared__ float red[MOEMLA_QUANT_THREADS / 32];
    const moemla_i64 row = blockIdx.x;
    if (use_meta && row >= (moemla_i64)meta[0] * MOEMLA_TM) return;  // uniform per block
    const int groups = (cols + 127) / 128;
    const int c = blockIdx.y * 128 + threadIdx.x;
    const bool in = threadIdx.x < 128 && c < cols;
    const float v = in ? moemla_load(src + row * cols + c) : 0.0f;
    float m = moemla_warp_max(fabsf(v));
    const int nwarps = (blockDim.x + MOEMLA_WARP_SIZE - 1) / MOEMLA_WARP_SIZE;
    if (threadIdx.x % MOEMLA_WARP_SIZE == 0) red[threadIdx.x / MOEMLA_WARP_SIZE] = m;
    __syncthreads();
    for (int w = 0; w < nwarps; ++w) m = fmaxf(m, red[w]);
    float s = fmaxf(m, 1e-4f) / 448.0f;
    if (ue8m0) s = moemla_pow2_ceil_f32(s);
    if (in) moemla_store(codes + row * cols + c, v / s);
    if (threadIdx.x == 0) scales[row * groups + blockIdx.y] = s;
}

// ---------------------------------------------------------------------------------------
// 4. Weighted combine, one block per token, slots summed in order
// ---------------------------------------------------------------------------------------
// With shared experts (yshared, `shared` segments of `seg_rows` rows, row t of segment s
// = token t): each adds its row with weight 1 after the slots, in s order.
template <typename T>
__device__ void moemla_moe_combine(const float* __restrict__ yslot, const int* __restrict__ slot_pos,
                                   const float* __restrict__ topk_weights,
                                   const float* __restrict__ yshared, int shared, int seg_rows,
                                   T* __restrict__ y, int hidden, int top_k) {
    const moemla_i64 t = blockIdx.x;
    for (int n = threadIdx.x; n < hidden; n += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < top_k; ++j) {
            const int p = slot_pos[t * top_k + j];
            if (p >= 0) acc += topk_weights[t * top_k + j] * yslot[(moemla_i64)p * hidden + n];
        }
        for (int s = 0; s < shared; ++s) acc += yshared[((moemla_i64)s * seg_rows + t) * hidden + n];
        moemla_store(y + t * hidden + n, acc);
    }
}

#define MOEMLA_EXPERTS_ENTRIES(SFX, T)                                                          \
    extern "C" __global__ void moemla_moe_gate_up_##SFX(                                         \
        const T* x, const T* w13, const int* sorted_rows, const int* tile_expert,                \
        const int* meta, T* act, int hidden, int inter, int top_k, float swiglu_limit) {         \
        moemla_moe_gate_up<T, T, T, T>(x, nullptr, w13, nullptr, sorted_rows, tile_expert, meta,    \
                                    act, hidden, inter, top_k, swiglu_limit);                    \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_gate_up_w8a16_##SFX(                                   \
        const T* x, const moemla_fp8* w13, const float* w13_scale, const int* sorted_rows,       \
        const int* tile_expert, const int* meta, T* act, int hidden, int inter, int top_k,       \
        float swiglu_limit) {                                                                    \
        moemla_moe_gate_up<T, T, moemla_fp8, T>(x, nullptr, w13, w13_scale, sorted_rows,           \
                                             tile_expert, meta, act, hidden, inter, top_k,       \
                                             swiglu_limit);                                      \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_gate_up_w8a8_##SFX(                                    \
        const moemla_fp8* xq, const float* x_scale, const moemla_fp8* w13,                       \
        const float* w13_scale, const int* sorted_rows, const int* tile_expert, const int* meta, \
        float* act, int hidden, int inter, int top_k, float swiglu_limit) {                      \
        moemla_moe_gate_up<T, moemla_fp8, moemla_fp8, float>(xq, x_scale, w13, w13_scale,       \
                                                             sorted_rows,                        \
                                                      tile_expert, meta, act, hidden, inter,     \
                                                      top_k, swiglu_limit);                      \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_down_##SFX(                                            \
        const T* act, const T* w2, const int* sorted_rows, const int* tile_expert,               \
        const int* meta, float* yslot, int hidden, int inter) {                                  \
        moemla_moe_down<T, T, T>(act, nullptr, w2, nullptr, sorted_rows, tile_expert, meta,      \
                                 yslot, hidden, inter);                                          \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_down_w8a16_##SFX(                                      \
        const T* act, const moemla_fp8* w2, const float* w2_scale, const int* sorted_rows,       \
        const int* tile_expert, const int* meta, float* yslot, int hidden, int inter) {          \
        moemla_moe_down<T, T, moemla_fp8>(act, nullptr, w2, w2_scale, sorted_rows, tile_expert,  \
                                          meta, yslot, hidden, inter);                           \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_down_w8a8_##SFX(                                       \
        const moemla_fp8* aq, const float* a_scale, const moemla_fp8* w2, const float* w2_scale, \
        const int* sorted_rows, const int* tile_expert, const int* meta, float* yslot,           \
        int hidden, int inter) {                                                                 \
        moemla_moe_down<T, moemla_fp8, moemla_fp8>(aq, a_scale, w2, w2_scale, sorted_rows,       \
                                                   tile_expert, meta, yslot, hidden, inter);     \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_quant_##SFX(const T* src, int cols, const int* meta,   \
                                                      int use_meta, moemla_fp8* codes,           \
                                                      float* scales, int ue8m0) {                \
        moemla_moe_quant<T>(src, cols, meta, use_meta, codes, scales, ue8m0);                    \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_combine_##SFX(const float* yslot, const int* slot_pos, \
                                                        const float* topk_weights, T* y,         \
                                                        int hidden, int top_k) {                 \
        moemla_moe_combine<T>(yslot, slot_pos, topk_weights, nullptr, 0, 0, y, hidden, top_k);   \
    }                                                                                            \
    extern "C" __global__ void moemla_moe_combine_shared_##SFX(                                  \
        const float* yslot, const int* slot_pos, const float* topk_weights, const float* yshared, \
        int shared, int seg_rows, T* y, int hidden, int top_k) {                                 \
        moemla_moe_combine<T>(yslot, slot_pos, topk_weights, yshared, shared, seg_rows, y, hidden, \
                              top_k);                                                            \
    }

MOEMLA_EXPERTS_ENTRIES(f32, float)
MOEMLA_EXPERTS_ENTRIES(f16, moemla_f16)
MOEMLA_EXPERTS_ENTRIES(bf16, moemla_bf16)
