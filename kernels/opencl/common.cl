// Storage types and f32 load/store helpers shared by every moemla OpenCL kernel.
//
// Exactly one of DTYPE_F32, DTYPE_F16, DTYPE_BF16 is defined by the build options (the
// host builds one program per (module, dtype)). All arithmetic is f32:
// - f16 is a storage format read with vload_half and written with vstore_half_rte, which
//   OpenCL C 1.2 provides without cl_khr_fp16;
// - bf16 is the upper half of an f32: widening is a shift, narrowing rounds to nearest-even.

#if defined(DTYPE_F32)
typedef float store_t;
inline float load_f32(__global const store_t *p, size_t i) { return p[i]; }
inline void store_f32(__global store_t *p, size_t i, float v) { p[i] = v; }
#elif defined(DTYPE_F16)
typedef half store_t;
inline float load_f32(__global const store_t *p, size_t i) { return vload_half(i, p); }
inline void store_f32(__global store_t *p, size_t i, float v) { vstore_half_rte(v, i, p); }
#elif defined(DTYPE_BF16)
typedef ushort store_t;
inline float load_f32(__global const store_t *p, size_t i) {
    return as_float(((uint)p[i]) << 16);
}
inline void store_f32(__global store_t *p, size_t i, float v) {
    uint u = as_uint(v);
    if (isnan(v)) {
        // Keep NaN a NaN (set a mantissa bit the truncation keeps).
        p[i] = (ushort)((u >> 16) | 0x40u);
    } else {
        // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
        p[i] = (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}
#else
#error "build with one of -DDTYPE_F32, -DDTYPE_F16, -DDTYPE_BF16"
#endif

// A loop over i in [0, n) strided by the work-group: every work-item runs the same number
// of iterations and the bound is checked inside. The plain form
// `for (int i = get_local_id(0); i < n; i += get_local_size(0))` is miscompiled by PoCL 3.1
// (loopvec work-group method) after a barrier: work-items with local id >= n ran one
// iteration. Use as `FOR_STRIDED(i, n) { ... } END_STRIDED`.
#define FOR_STRIDED(i, n)                                                            \
    for (int i##_base = 0; i##_base < (n); i##_base += (int)get_local_size(0)) {     \
        const int i = i##_base + (int)get_local_id(0);                               \
        if (i < (n))
#define END_STRIDED }

// A loop over the work-item's contiguous chunk of [0, n), ceil(n / LS) long: the same trip
// count on every work-item (see FOR_STRIDED), bound checked inside. Chunks are in work-item
// order, so a scan over work-items keeps index order. `FOR_CHUNK(i, n) { ... } END_CHUNK`.
#define FOR_CHUNK(i, n)                                                                  \
    for (int i##_j = 0, i##_c = chunk_len(n); i##_j < i##_c; ++i##_j) {                  \
        const int i = (int)get_local_id(0) * i##_c + i##_j;                              \
        if (i < (n))
#define END_CHUNK }

inline int chunk_len(int n) {
    const int ls = get_local_size(0);
    return n / ls + (n % ls != 0);
}

// Exclusive prefix sum over work-items (Hillis-Steele); *total gets the sum of all.
inline uint wg_scan(__local uint *buf, uint v, uint *total) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    buf[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int off = 1; off < ls; off <<= 1) {
        const uint add = lid >= off ? buf[lid - off] : 0u;
        barrier(CLK_LOCAL_MEM_FENCE);
        buf[lid] += add;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const uint incl = buf[lid];
    *total = buf[ls - 1];
    barrier(CLK_LOCAL_MEM_FENCE);
    return incl - v;
}

// One online-softmax step over a work-item's own row of n scores: the scores become
// exp(score - m_new) (zeros while every score so far is -inf), *m_run and *l_run move to
// the new running max and sum; returns the factor that rescales the partials so far.
inline float online_softmax_row(__local float *sc, int n, float *m_run, float *l_run) {
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = fmax(mx, sc[j]);
    const float m_new = fmax(*m_run, mx);
    float a = 1.0f, sum = 0.0f;
    if (m_new != -INFINITY) {
        a = exp(*m_run - m_new);
        for (int j = 0; j < n; ++j) {
            const float e = exp(sc[j] - m_new);
            sc[j] = e;
            sum += e;
        }
    } else {
        for (int j = 0; j < n; ++j) sc[j] = 0.0f;
    }
    *l_run = *l_run * a + sum;
    *m_run = m_new;
    return a;
}

// wg_scan of 16 counters at once.
inline uint16 wg_scan16(__local uint16 *buf, uint16 v, uint16 *total) {
    const int lid = get_local_id(0), ls = get_local_size(0);
    buf[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int off = 1; off < ls; off <<= 1) {
        const uint16 add = lid >= off ? buf[lid - off] : (uint16)(0u);
        barrier(CLK_LOCAL_MEM_FENCE);
        buf[lid] += add;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const uint16 incl = buf[lid];
    *total = buf[ls - 1];
    barrier(CLK_LOCAL_MEM_FENCE);
    return incl - v;
}

// Records a bad index at row-major `position` in flag slot `slot` of `flags` (two ints per
// slot: the position, then the value flag_capture copies there): the smallest position wins.
// The caller then does not use the index.
inline void flag_bad_index(volatile __global int *flags, int slot, int position) {
    atomic_min(&flags[2 * slot], position);
}
