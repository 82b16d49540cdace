/*
 * Internal declarations shared by the example plugin's two files: plugin.c (the ABI
 * plumbing: entry point, errors, device, buffers) and ops.c (the three v1 ops).
 * Not part of the ABI: moemla only sees include/moemla_plugin.h.
 */
#ifndef MOEMLA_EXAMPLE_PLUGIN_H
#define MOEMLA_EXAMPLE_PLUGIN_H

#include "moemla_plugin.h"

/* This plugin's device memory is host memory: a buffer is a malloc'd byte array. A GPU
 * plugin would keep a device pointer (and its context) here instead. */
struct MoemlaBuffer {
    size_t size;
    unsigned char* data;
};

/* An error: its code, its message, and for index errors the argument, position, value. */
struct MoemlaError {
    MoemlaErrorCode code;
    char message[512];
    const char* index_arg; /* a string literal (static), or NULL */
    size_t index_position;
    int64_t index_value;
    int is_static; /* the preallocated out-of-memory error: error_free leaves it alone */
};

/* A new error with a printf-style message (never NULL: falls back to a static error). */
MoemlaError* ex_error(MoemlaErrorCode code, const char* format, ...);

/* A MOEMLA_ERROR_INDEX_OUT_OF_RANGE error for `arg` (a string literal). */
MoemlaError* ex_index_error(const char* arg, size_t position, int64_t value);

/* Returns MOEMLA_ERROR_INVALID_ARGUMENT unless `args` (of `type`) is non-NULL and holds
 * every field up to `last_field`: the ABI 1.0 fields this plugin reads. */
#define EX_REQUIRE_SIZE(type, args, last_field)                                          \
    do {                                                                                 \
        if ((args) == NULL || !MOEMLA_STRUCT_HAS(type, args, last_field)) {              \
            return ex_error(MOEMLA_ERROR_INVALID_ARGUMENT,                               \
                            "example: " #type " is NULL or smaller than ABI 1.0's");     \
        }                                                                                \
    } while (0)

/* The ops (ops.c). */
MoemlaError* ex_moe_route(MoemlaMoeRouteArgs* args);
MoemlaError* ex_moe_experts(MoemlaMoeExpertsArgs* args);
MoemlaError* ex_mla_decode(MoemlaMlaDecodeArgs* args);

#endif /* MOEMLA_EXAMPLE_PLUGIN_H */
