// mla_cache_write: latent rows [N, D] (run dtype) written in place into the caller's paged
// cache at flat slots slot_mapping[N] (-1: skip the row), dense (rows copied as stored) or
// fp8_ds_v32 (656-byte rows written by ds_write_row of mla_kv_quantize.cl, built before this
// file). One work-group per row. A slot outside [0, nslots) is flagged (flag_bad_index at
// the row's position) and the row not written. When two rows name one slot the later row
// wins: a row first scans the rows after it and writes nothing if one names its slot, so no
// two work-groups ever write the same slot.

// Whether row `row` (slot `slot`, valid) is overwritten by a later row. Uniform across the
// work-group; every work-item calls it (barriers).
int written_later(__global const int *slot_mapping, int N, int row, int slot,
                  __local int *later) {
    const int l = get_local_id(0), ls = get_local_size(0);
    if (l == 0) *later = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int j = row + 1 + l; j < N; j += ls)
        if (slot_mapping[j] == slot) *later = 1;
    barrier(CLK_LOCAL_MEM_FENCE);
    return *later;
}

// The slot of `row`, or -1 when it writes nothing (skipped, flagged out of range, or
// overwritten by a later row). Uniform across the work-group.
int target_slot(__global const int *slot_mapping, int N, int nslots, int row,
                volatile __global int *flags, int flag_slot, __local int *later) {
    const int slot = slot_mapping[row];
    if (slot == -1) return -1;
    if (slot < 0 || slot >= nslots) {
        if (get_local_id(0) == 0) flag_bad_index(flags, flag_slot, row);
        return -1;
    }
    return written_later(slot_mapping, N, row, slot, later) ? -1 : slot;
}

// Dense: rows of `units` 16-bit words (D elements of the run dtype, copied bit for bit).
__kernel void cache_write_dense(__global const ushort *kv, __global const int *slot_mapping,
                                __global ushort *cache, int N, int units, int nslots,
                                volatile __global int *flags, int flag_slot,
                                __local int *later) {
    const int row = get_group_id(0), l = get_local_id(0), ls = get_local_size(0);
    const int slot = target_slot(slot_mapping, N, nslots, row, flags, flag_slot, later);
    if (slot < 0) return;
    __global const ushort *src = kv + (size_t)row * units;
    __global ushort *dst = cache + (size_t)slot * units;
    for (int c = l; c < units; c += ls) dst[c] = src[c];
}

// fp8_ds_v32 (work-groups of KVQ_LS): the row quantized as mla_kv_quantize does. The rows
// were checked by cache_rows_finite first: when it flagged a non-finite value (finite slot
// `nf_slot` of `nf_flags` no longer clean), no work-group writes anything.
__kernel void cache_write_fp8(__global const store_t *kv, __global const int *slot_mapping,
                              __global uchar *cache, int N, int nslots,
                              volatile __global int *flags, int flag_slot,
                              __global const int *nf_flags, int nf_slot,
                              __local int *later, __local float *red) {
    const int row = get_group_id(0), l = get_local_id(0);
    if (nf_flags[2 * nf_slot] != INT_MAX) return; // uniform: written by an earlier kernel
    const int slot = target_slot(slot_mapping, N, nslots, row, flags, flag_slot, later);
    if (slot < 0) return;
    __global const store_t *x = kv + (size_t)row * 576;
    float v[4];
    for (int t = 0; t < 4; ++t) v[t] = load_f32(x, t * 128 + l);
    const float r = l < 64 ? load_f32(x, 512 + l) : 0.0f;
    ds_write_row(v, r, cache + (size_t)slot * DS_ROW, l, red);
}

// fp8_ds_v32 input check: flag slot `flag_slot` takes the smallest row-major element index of
// kv [N, 576] holding a non-finite value in a row whose slot is not -1 (INT_MAX: none).
__kernel void cache_rows_finite(__global const store_t *kv, __global const int *slot_mapping,
                                int N, volatile __global int *flags, int flag_slot) {
    const int i = get_global_id(0);
    if (i >= N * 576) return;
    if (slot_mapping[i / 576] != -1 && !isfinite(load_f32(kv, i)))
        flag_bad_index(flags, flag_slot, i);
}
