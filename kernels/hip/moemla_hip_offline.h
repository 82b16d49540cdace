// moemla_hip_offline.h — what hipRTC provides implicitly, for offline compile checks only.
//
// hipRTC compiles the kernels (kernels/common/moemla_device.h + kernels/cuda/*.cu) with the
// HIP device runtime already declared. The offline CI check compiles the same text with
// `clang -x hip -nogpuinc -nogpulib` (no ROCm headers, no ROCm device libraries), force-
// including this file instead. It declares the subset of the HIP device API the kernels use,
// on clang's amdgcn builtins only, with HIP's documented semantics. The run-time backend
// never uses it.

#ifndef MOEMLA_HIP_OFFLINE_H
#define MOEMLA_HIP_OFFLINE_H

#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __host__ __attribute__((host))
#define __shared__ __attribute__((shared))
#define __constant__ __attribute__((constant))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(max_threads, ...) __attribute__((amdgpu_flat_work_group_size(1, max_threads)))

#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))

// threadIdx / blockIdx / blockDim / gridDim as properties (clang accepts __declspec(property)
// in HIP mode, as its CUDA builtin-variable header does).
#define MOEMLA_OFFLINE_DIM3(type, fx, fy, fz)                                 \
    struct type {                                                             \
        __declspec(property(get = get_x)) unsigned int x;                     \
        __declspec(property(get = get_y)) unsigned int y;                     \
        __declspec(property(get = get_z)) unsigned int z;                     \
        __device__ static unsigned int get_x() { return fx; }                 \
        __device__ static unsigned int get_y() { return fy; }                 \
        __device__ static unsigned int get_z() { return fz; }                 \
    }

MOEMLA_OFFLINE_DIM3(moemla_offline_thread_idx, __builtin_amdgcn_workitem_id_x(),
                    __builtin_amdgcn_workitem_id_y(), __builtin_amdgcn_workitem_id_z());
MOEMLA_OFFLINE_DIM3(moemla_offline_block_idx, __builtin_amdgcn_workgroup_id_x(),
                    __builtin_amdgcn_workgroup_id_y(), __builtin_amdgcn_workgroup_id_z());
MOEMLA_OFFLINE_DIM3(moemla_offline_block_dim, __builtin_amdgcn_workgroup_size_x(),
                    __builtin_amdgcn_workgroup_size_y(), __builtin_amdgcn_workgroup_size_z());
MOEMLA_OFFLINE_DIM3(moemla_offline_grid_dim,
                    (__builtin_amdgcn_grid_size_x() + __builtin_amdgcn_workgroup_size_x() - 1) /
                        __builtin_amdgcn_workgroup_size_x(),
                    (__builtin_amdgcn_grid_size_y() + __builtin_amdgcn_workgroup_size_y() - 1) /
                        __builtin_amdgcn_workgroup_size_y(),
                    (__builtin_amdgcn_grid_size_z() + __builtin_amdgcn_workgroup_size_z() - 1) /
                        __builtin_amdgcn_workgroup_size_z());

extern const __device__ __attribute__((weak)) moemla_offline_thread_idx threadIdx;
extern const __device__ __attribute__((weak)) moemla_offline_block_idx blockIdx;
extern const __device__ __attribute__((weak)) moemla_offline_block_dim blockDim;
extern const __device__ __attribute__((weak)) moemla_offline_grid_dim gridDim;

#define warpSize __AMDGCN_WAVEFRONT_SIZE

__device__ inline void __syncthreads() {
    __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
    __builtin_amdgcn_s_barrier();
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}
__device__ inline void __threadfence() { __builtin_amdgcn_fence(__ATOMIC_SEQ_CST, "agent"); }
__device__ inline void __threadfence_block() { __builtin_amdgcn_fence(__ATOMIC_SEQ_CST, "workgroup"); }

// Lane shuffles (HIP semantics: width is a power of two <= the wavefront; a source lane
// outside the caller's width-segment reads the caller's own value), via ds_bpermute.
__device__ inline int moemla_offline_lane() {
    return __builtin_amdgcn_mbcnt_hi(~0u, __builtin_amdgcn_mbcnt_lo(~0u, 0u));
}
__device__ inline int moemla_offline_bpermute(int src_lane, int v) {
    return __builtin_amdgcn_ds_bpermute(src_lane << 2, v);
}
__device__ inline int __shfl_xor(int v, int lane_mask, int width = __AMDGCN_WAVEFRONT_SIZE) {
    int self = moemla_offline_lane();
    int src = self ^ lane_mask;
    if (src >= ((self + width) & ~(width - 1))) src = self;
    return moemla_offline_bpermute(src, v);
}
__device__ inline int __shfl_down(int v, unsigned int delta, int width = __AMDGCN_WAVEFRONT_SIZE) {
    int self = moemla_offline_lane();
    int src = ((self & (width - 1)) + (int)delta) >= width ? self : self + (int)delta;
    return moemla_offline_bpermute(src, v);
}
__device__ inline int __shfl_up(int v, unsigned int delta, int width = __AMDGCN_WAVEFRONT_SIZE) {
    int self = moemla_offline_lane();
    int src = (self & (width - 1)) < (int)delta ? self : self - (int)delta;
    return moemla_offline_bpermute(src, v);
}
__device__ inline int __shfl(int v, int src_lane, int width = __AMDGCN_WAVEFRONT_SIZE) {
    int self = moemla_offline_lane();
    int src = (src_lane & (width - 1)) + (self & ~(width - 1));
    return moemla_offline_bpermute(src, v);
}
__device__ inline float __shfl_xor(float v, int lane_mask, int width = __AMDGCN_WAVEFRONT_SIZE) {
    return __builtin_bit_cast(float, __shfl_xor(__builtin_bit_cast(int, v), lane_mask, width));
}
__device__ inline float __shfl_down(float v, unsigned int delta, int width = __AMDGCN_WAVEFRONT_SIZE) {
    return __builtin_bit_cast(float, __shfl_down(__builtin_bit_cast(int, v), delta, width));
}
__device__ inline float __shfl_up(float v, unsigned int delta, int width = __AMDGCN_WAVEFRONT_SIZE) {
    return __builtin_bit_cast(float, __shfl_up(__builtin_bit_cast(int, v), delta, width));
}
__device__ inline float __shfl(float v, int src_lane, int width = __AMDGCN_WAVEFRONT_SIZE) {
    return __builtin_bit_cast(float, __shfl(__builtin_bit_cast(int, v), src_lane, width));
}
__device__ inline unsigned long long __ballot(int pred) {
    return __builtin_amdgcn_ballot_w64(pred != 0);
}

// Atomics (device scope is what HIP's atomicX gives on one GPU).
__device__ inline int atomicMin(int* p, int v) {
    return __hip_atomic_fetch_min(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    return __hip_atomic_fetch_min(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ inline int atomicMax(int* p, int v) {
    return __hip_atomic_fetch_max(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ inline int atomicAdd(int* p, int v) {
    return __hip_atomic_fetch_add(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __hip_atomic_fetch_add(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ inline float atomicAdd(float* p, float v) {
    return __hip_atomic_fetch_add(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
__device__ inline int atomicCAS(int* p, int expected, int desired) {
    __hip_atomic_compare_exchange_strong(p, &expected, desired, __ATOMIC_RELAXED, __ATOMIC_RELAXED,
                                         __HIP_MEMORY_SCOPE_AGENT);
    return expected;
}
__device__ inline int atomicExch(int* p, int v) {
    return __hip_atomic_exchange(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}

// f32 math (llvm intrinsics the AMDGPU backend lowers inline; no device library needed).
__device__ inline float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
__device__ inline float fminf(float a, float b) { return __builtin_fminf(a, b); }
__device__ inline float fabsf(float a) { return __builtin_fabsf(a); }
__device__ inline float expf(float a) { return __builtin_expf(a); }
__device__ inline float exp2f(float a) { return __builtin_exp2f(a); }
__device__ inline float __expf(float a) { return __builtin_expf(a); }
__device__ inline float logf(float a) { return __builtin_logf(a); }
__device__ inline float __logf(float a) { return __builtin_logf(a); }
__device__ inline float log2f(float a) { return __builtin_log2f(a); }
__device__ inline float sqrtf(float a) { return __builtin_sqrtf(a); }
__device__ inline float rsqrtf(float a) { return 1.0f / __builtin_sqrtf(a); }
__device__ inline float fmaf(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
__device__ inline float __fdividef(float a, float b) { return a / b; }
__device__ inline bool isinf(float a) { return __builtin_isinf(a); }
__device__ inline bool isnan(float a) { return __builtin_isnan(a); }
__device__ inline int min(int a, int b) { return a < b ? a : b; }
__device__ inline int max(int a, int b) { return a > b ? a : b; }

#endif  // MOEMLA_HIP_OFFLINE_H
