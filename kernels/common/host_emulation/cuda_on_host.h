// cuda_on_host.h — runs the moemla kernels on the host, one std::thread per GPU thread,
// to check their index arithmetic, bounds, barriers and numerics without a GPU.
//
// The kernels are compiled in their HIP dialect (MOEMLA_HIP), so the portable paths run;
// __AMDGCN_WAVEFRONT_SIZE picks the emulated lane count (32 or 64). With
// MOEMLA_EMULATE_MMA the tensor-core paths run too, on an emulation of mma.sync m16n8k16
// written from the PTX ISA's fragment tables.
//
// One block runs at a time, so `__shared__` (static) storage is per block, as on a GPU.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __HIP__ 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct moemla_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local moemla_dim3 threadIdx;
inline moemla_dim3 blockIdx, blockDim, gridDim;

alignas(16) inline unsigned char moemla_emu_smem[1 << 20];  // dynamic shared memory of every kernel
#define MOEMLA_DYN_SMEM(name) unsigned char* name = moemla_emu_smem

struct moemla_emu_block {
    std::unique_ptr<std::barrier<>> block_bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
    std::vector<uint32_t> exchange;
    std::vector<uint32_t> wide;  // MOEMLA_EMU_WIDE words per thread (moemla_emu_gather)
    int warp_size = 32;
    // Visit the blocks of a launch last to first (a GPU runs them in any order: a kernel
    // whose result depends on block order fails one of the two orders).
    bool reverse_blocks = false;
};
inline moemla_emu_block g_emu;

inline void __syncthreads() { g_emu.block_bar->arrive_and_wait(); }

// Lane exchange: every lane of the warp publishes `bits`, then reads lane `src`'s.
inline uint32_t moemla_emu_exchange(uint32_t bits, int src_lane) {
    const int tid = (int)threadIdx.x;
    const int ws = g_emu.warp_size;
    const int warp = tid / ws;
    g_emu.exchange[tid] = bits;
    g_emu.warp_bars[warp]->arrive_and_wait();
    const uint32_t got = g_emu.exchange[warp * ws + src_lane];
    g_emu.warp_bars[warp]->arrive_and_wait();
    return got;
}
// Most words one lane publishes in one moemla_emu_gather.
#define MOEMLA_EMU_WIDE 8
// Every lane of the warp publishes `n` (<= MOEMLA_EMU_WIDE) words; each reads all lanes'
// into out[lane * n + i]. Two warp barriers for the lot (the emulated mma.sync's operand
// exchange, which would otherwise cost two per word and lane).
inline void moemla_emu_gather(const uint32_t* mine, int n, uint32_t* out) {
    const int tid = (int)threadIdx.x;
    const int ws = g_emu.warp_size;
    const int warp = tid / ws;
    for (int i = 0; i < n; ++i) g_emu.wide[(size_t)tid * MOEMLA_EMU_WIDE + i] = mine[i];
    g_emu.warp_bars[warp]->arrive_and_wait();
    for (int l = 0; l < ws; ++l)
        for (int i = 0; i < n; ++i) out[l * n + i] = g_emu.wide[(size_t)(warp * ws + l) * MOEMLA_EMU_WIDE + i];
    g_emu.warp_bars[warp]->arrive_and_wait();
}

inline float __shfl_xor(float v, int m, int w) {
    int lane = (int)threadIdx.x % w;
    uint32_t b;
    std::memcpy(&b, &v, 4);
    b = moemla_emu_exchange(b, lane ^ m);
    std::memcpy(&v, &b, 4);
    return v;
}
inline int __shfl_xor(int v, int m, int w) {
    int lane = (int)threadIdx.x % w;
    return (int)moemla_emu_exchange((uint32_t)v, lane ^ m);
}
inline float __shfl_down(float v, int d, int w) {
    int lane = (int)threadIdx.x % w;
    uint32_t b;
    std::memcpy(&b, &v, 4);
    b = moemla_emu_exchange(b, lane + d < w ? lane + d : lane);
    std::memcpy(&v, &b, 4);
    return v;
}
inline int __shfl_down(int v, int d, int w) {
    int lane = (int)threadIdx.x % w;
    return (int)moemla_emu_exchange((uint32_t)v, lane + d < w ? lane + d : lane);
}
inline unsigned long long __ballot(int pred) {
    unsigned long long mask = 0;
    const int ws = g_emu.warp_size;
    const int base = ((int)threadIdx.x / ws) * ws;
    uint32_t mine = pred ? 1u : 0u;
    for (int l = 0; l < ws; ++l) mask |= (unsigned long long)moemla_emu_exchange(mine, l) << l;
    (void)base;
    return mask;
}
inline int atomicMin(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    std::atomic_ref<unsigned long long> a(*p);
    unsigned long long old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (v > old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline int atomicCAS(int* p, int expected, int desired) {
    std::atomic_ref<int>(*p).compare_exchange_strong(expected, desired);
    return expected;  // the value found (compare_exchange_strong stores it on failure)
}

// Runs `kernel()` over the grid, one block at a time: `threads` host threads (one per GPU
// thread) visit every block in order, meeting at a barrier between blocks.
inline void moemla_emu_launch(moemla_dim3 grid, unsigned threads, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = moemla_dim3{threads, 1, 1};
    const int ws = g_emu.warp_size;
    g_emu.block_bar = std::make_unique<std::barrier<>>(threads);
    g_emu.warp_bars.clear();
    for (unsigned w = 0; w < (threads + ws - 1) / ws; ++w)
        g_emu.warp_bars.push_back(std::make_unique<std::barrier<>>(ws));
    g_emu.exchange.assign(threads, 0);
    g_emu.wide.assign((size_t)threads * MOEMLA_EMU_WIDE, 0);
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([t, blocks, grid, &kernel] {
            threadIdx = moemla_dim3{t, 0, 0};
            for (unsigned long long i = 0; i < blocks; ++i) {
                const unsigned long long b = g_emu.reverse_blocks ? blocks - 1 - i : i;
                if (t == 0)
                    blockIdx = moemla_dim3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                                           (unsigned)(b / ((unsigned long long)grid.x * grid.y))};
                g_emu.block_bar->arrive_and_wait();  // blockIdx published
                kernel();
                g_emu.block_bar->arrive_and_wait();  // block done before the next starts
            }
        });
    for (auto& th : pool) th.join();
}
