// Benchmark ceiling: dense c[M, N] = a[M, K] . b[N, K]^T, f32 compute, store_t in and out.
//
// Each work-group of 16 x 16 work-items computes a 64 x 64 tile of c; each work-item a 4 x 4
// micro-tile (rows ly + 16 i, columns lx + 16 j, so neighbouring work-items read neighbouring
// local-memory words). K is walked in 16-wide slices: the work-group stages the 64 x 16 slices
// of a and b in local memory, k-major, each work-item loading 4 elements of each (consecutive
// work-items read consecutive k, i.e. consecutive addresses of the row-major operands).
// Out-of-range rows and k are loaded as zeros; out-of-range outputs are not stored.

#define GEMM_TILE 64
#define GEMM_K 16
#define GEMM_WG 16
#define GEMM_MICRO 4

// Launch: global (ceil(N / 64) * 16, ceil(M / 64) * 16), local (16, 16).
__kernel void dense_gemm(__global const store_t *a, __global const store_t *b,
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
