// Index-error flags (backends/opencl/src/flags.rs): the value capture of one slot.
//
// A slot is two ints: the first bad row-major position (INT_MAX while clean; kernels lower it
// with flag_bad_index) and the value found there. The host enqueues flag_capture after the
// op's kernels, so `index` still holds what they read; a position outside [0, n) is left for
// the host to report as a kernel bug, never read.

// Launch: global 1, local 1.
__kernel void flag_capture(__global int *flags, int slot, __global const int *index, int n) {
    const int at = flags[2 * slot];
    if (at >= 0 && at < n) flags[2 * slot + 1] = index[at];
}
