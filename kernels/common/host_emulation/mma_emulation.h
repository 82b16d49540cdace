// mma_emulation.h — mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 on the
// host emulator, from the PTX ISA fragment tables (g = lane / 4, t = lane % 4):
//   A: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   D: d0 = (g, 2t), d1 = (g, 2t+1), d2 = (g+8, 2t), d3 = (g+8, 2t+1)
// and (MOEMLA_EMULATE_MMA_FP8) mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32.
// Include after moemla_device.h, before the kernels. Only meaningful with 32-lane warps.
#pragma once

template <typename Tag>
inline float moemla_emu_half(moemla_u32 bits16, Tag);
template <>
inline float moemla_emu_half(moemla_u32 bits16, moemla_bf16) { return moemla_bf16_to_f32((moemla_u16)bits16); }
template <>
inline float moemla_emu_half(moemla_u32 bits16, moemla_f16) { return moemla_f16_to_f32((moemla_u16)bits16); }

template <typename Tag>
inline void moemla_mma_16816(float* d, const moemla_u32* a, const moemla_u32* b, Tag tag) {
    float A[16][16], B[16][8];
    const moemla_u32 mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    moemla_u32 all[32 * 6];
    moemla_emu_gather(mine, 6, all);  // every lane's fragments
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const moemla_u32* ar = all + l * 6;
        const moemla_u32* br = ar + 4;
        const int rows[4] = {g, g + 8, g, g + 8};
        const int cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int i = 0; i < 4; ++i) {
            A[rows[i]][cols[i]] = moemla_emu_half(ar[i] & 0xffffu, tag);
            A[rows[i]][cols[i] + 1] = moemla_emu_half(ar[i] >> 16, tag);
        }
        B[2 * t][g] = moemla_emu_half(br[0] & 0xffffu, tag);
        B[2 * t + 1][g] = moemla_emu_half(br[0] >> 16, tag);
        B[2 * t + 8][g] = moemla_emu_half(br[1] & 0xffffu, tag);
        B[2 * t + 9][g] = moemla_emu_half(br[1] >> 16, tag);
    }
    const int lane = (int)threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int rr[4] = {g, g, g + 8, g + 8};
    const int cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A[rr[i]][k] * B[k][cc[i]];
        d[i] = acc;
    }
}

#ifdef MOEMLA_EMULATE_MMA_FP8
// mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32, written from the PTX ISA's
// "Matrix Fragments for mma.m16n8k32" (.e4m3 rows of the tables; element i of a fragment
// is byte i % 4 of register i / 4, low byte first):
//   A (a0..a15): row = g for 0 <= i < 4 or 8 <= i < 12, else g + 8;
//                col = 4t + (i & 3), plus 16 for i >= 8
//   B (b0..b7):  row (k) = 4t + (i & 3), plus 16 for i >= 4; col (n) = g
//   C/D: as for m16n8k16 with f32 accumulators.
// Products of e4m3 values are exact in f32; they are summed in k order in f32.
inline void moemla_mma_16832_e4m3(float* d, const moemla_u32* a, const moemla_u32* b) {
    float A[16][32], B[32][8];
    const moemla_u32 mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    moemla_u32 all[32 * 6];
    moemla_emu_gather(mine, 6, all);  // every lane's fragments
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const moemla_u32* ar = all + l * 6;
        const moemla_u32* br = ar + 4;
        for (int i = 0; i < 16; ++i) {
            const int row = (i < 4 || (i >= 8 && i < 12)) ? g : g + 8;
            const int col = 4 * t + (i & 3) + (i >= 8 ? 16 : 0);
            A[row][col] = moemla_e4m3_to_f32((ar[i / 4] >> (8 * (i % 4))) & 0xffu);
        }
        for (int i = 0; i < 8; ++i) {
            const int row = 4 * t + (i & 3) + (i >= 4 ? 16 : 0);
            B[row][g] = moemla_e4m3_to_f32((br[i / 4] >> (8 * (i % 4))) & 0xffu);
        }
    }
    const int lane = (int)threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int rr[4] = {g, g, g + 8, g + 8};
    const int cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float acc = d[i];
        for (int k = 0; k < 32; ++k) acc += A[rr[i]][k] * B[k][cc[i]];
        d[i] = acc;
    }
}
#endif
