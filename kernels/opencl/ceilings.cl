// Benchmark ceiling: dense c[M, N] = a[M, K] . b[N, K]^T, f32 compute, store_t in and out.
// Two kernels; the host picks dense_gemm_dot on CPU devices and dense_gemm_tiled elsewhere.
//
// dense_gemm_tiled (GPUs): each work-group of 16 x 16 work-items computes a 64 x 64 tile of c;
// each work-item a 4 x 4 micro-tile (rows ly + 16 i, columns lx + 16 j, so neighbouring
// work-items read neighbouring local-memory words). K is walked in 16-wide slices: the
// work-group stages the 64 x 16 slices of a and b in local memory, k-major, each work-item
// loading 4 elements of each (consecutive work-items read consecutive k, i.e. consecutive
// addresses of the row-major operands). Out-of-range rows and k are loaded as zeros;
// out-of-range outputs are not stored.

#define GEMM_TILE 64
#define GEMM_K 16
#define GEMM_WG 16
#define GEMM_MICRO 4

// Launch: global (ceil(N / 64) * 16, ceil(M / 64) * 16), local (16, 16).
__kernel void dense_gemm_tiled(__global const store_t *a, __global const store_t *b,
                               __global store_t *c, int M, int N, int K) {
    __local float as[GEMM_K][GEMM_TILE + 1];
    __local float bs[GEMM_K][GEMM_TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int lid = ly * GEMM_WG + lx;
    const int row0 = get_group_id(1) * GEMM_TILE;
    const int col0 = get_group_id(0) * GEMM_TILE;
    float acc[GEMM_MICRO][GEMM_MICRO];
    for (int i = 0; i < GEMM_MICRO; ++i)
        for (int j = 0; j < GEMM_MICRO; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += GEMM_K) {
        for (int l = 0; l < GEMM_MICRO; ++l) {
            const int idx = lid + l * GEMM_WG * GEMM_WG;
            const int r = idx / GEMM_K, kk = idx % GEMM_K;
            const int k = k0 + kk;
            const int ar = row0 + r, br = col0 + r;
            as[kk][r] = (ar < M && k < K) ? load_f32(a, (size_t)ar * K + k) : 0.0f;
            bs[kk][r] = (br < N && k < K) ? load_f32(b, (size_t)br * K + k) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < GEMM_K; ++kk) {
            float av[GEMM_MICRO], bv[GEMM_MICRO];
            for (int i = 0; i < GEMM_MICRO; ++i) av[i] = as[kk][ly + GEMM_WG * i];
            for (int j = 0; j < GEMM_MICRO; ++j) bv[j] = bs[kk][lx + GEMM_WG * j];
            for (int i = 0; i < GEMM_MICRO; ++i)
                for (int j = 0; j < GEMM_MICRO; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < GEMM_MICRO; ++i) {
        const int r = row0 + ly + GEMM_WG * i;
        for (int j = 0; j < GEMM_MICRO; ++j) {
            const int col = col0 + lx + GEMM_WG * j;
            if (r < M && col < N) store_f32(c, (size_t)r * N + col, acc[i][j]);
        }
    }
}

// dense_gemm_dot (CPUs): no local memory or barriers, which a CPU runtime such as PoCL turns
// into per-work-item state (5x slower there). Each work-item computes a 4 x 4 block of c as
// 16 dot products over K, 8 lanes wide: per 8-wide k step it loads 4 row slices of a and 4 of
// b (both operands are contiguous along K) and does 16 vector FMAs; the lanes are summed at
// the end, the K % 8 tail is scalar. Rows and columns past M and N are clamped for loading
// and not stored.

// 8 consecutive elements from element i, widened to f32.
#if defined(DTYPE_F32)
inline float8 load8_f32(__global const store_t *p, size_t i) { return vload8(0, p + i); }
#elif defined(DTYPE_F16)
inline float8 load8_f32(__global const store_t *p, size_t i) { return vload_half8(0, p + i); }
#else
inline float8 load8_f32(__global const store_t *p, size_t i) {
    return as_float8(convert_uint8(vload8(0, p + i)) << 16);
}
#endif

#define GEMM_RB 4

// Launch: global (ceil(ceil(N / 4) / 4) * 4, ceil(ceil(M / 4) / 16) * 16), local (4, 16).
__kernel void dense_gemm_dot(__global const store_t *a, __global const store_t *b,
                             __global store_t *c, int M, int N, int K) {
    const int c0 = get_global_id(0) * GEMM_RB, r0 = get_global_id(1) * GEMM_RB;
    if (c0 >= N || r0 >= M) return;
    size_t ar[GEMM_RB], br[GEMM_RB];
    for (int i = 0; i < GEMM_RB; ++i) ar[i] = (size_t)min(r0 + i, M - 1) * K;
    for (int j = 0; j < GEMM_RB; ++j) br[j] = (size_t)min(c0 + j, N - 1) * K;
    float8 acc[GEMM_RB][GEMM_RB];
    for (int i = 0; i < GEMM_RB; ++i)
        for (int j = 0; j < GEMM_RB; ++j) acc[i][j] = (float8)(0.0f);
    const int K8 = K / 8 * 8;
    for (int k = 0; k < K8; k += 8) {
        float8 av[GEMM_RB], bv[GEMM_RB];
        for (int i = 0; i < GEMM_RB; ++i) av[i] = load8_f32(a, ar[i] + k);
        for (int j = 0; j < GEMM_RB; ++j) bv[j] = load8_f32(b, br[j] + k);
        for (int i = 0; i < GEMM_RB; ++i)
            for (int j = 0; j < GEMM_RB; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
    for (int i = 0; i < GEMM_RB; ++i) {
        for (int j = 0; j < GEMM_RB; ++j) {
            const float8 v = acc[i][j];
            float s = ((v.s0 + v.s1) + (v.s2 + v.s3)) + ((v.s4 + v.s5) + (v.s6 + v.s7));
            for (int k = K8; k < K; ++k)
                s = fma(load_f32(a, ar[i] + k), load_f32(b, br[j] + k), s);
            if (r0 + i < M && c0 + j < N) store_f32(c, (size_t)(r0 + i) * N + c0 + j, s);
        }
    }
}
