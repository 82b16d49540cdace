/*
 * The moemla example plugin, part 1 of 2: the ABI plumbing (entry point and function
 * table, errors, plugin and device information, buffers). The ops are in ops.c.
 *
 * This plugin runs on the host CPU and keeps its "device memory" in malloc'd host
 * memory, so that every line is plain C99. A vendor copies both files, keeps this
 * structure, and replaces the buffer functions with its runtime's allocation and copies
 * and the ops with its kernels. Build: see README.md.
 */
#include "example_plugin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the function table reports about itself. moemla's loader tests rebuild this file
 * with other values (another major version, a newer minor, a table that ends early) to
 * check that moemla refuses or accepts it; a real plugin keeps the header's values. */
#ifndef MOEMLA_EXAMPLE_ABI_MAJOR
#define MOEMLA_EXAMPLE_ABI_MAJOR MOEMLA_PLUGIN_ABI_MAJOR
#endif
#ifndef MOEMLA_EXAMPLE_ABI_MINOR
#define MOEMLA_EXAMPLE_ABI_MINOR MOEMLA_PLUGIN_ABI_MINOR
#endif
#ifndef MOEMLA_EXAMPLE_API_STRUCT_SIZE
#define MOEMLA_EXAMPLE_API_STRUCT_SIZE MOEMLA_PLUGIN_API_STRUCT_SIZE
#endif

/* ---- Errors ------------------------------------------------------------------------ */

/* Returned when an error object itself cannot be allocated; never freed. */
static MoemlaError out_of_memory_error = {
    MOEMLA_ERROR_OUT_OF_MEMORY, "example: cannot allocate an error object", NULL, 0, 0, 1};

MoemlaError* ex_error(MoemlaErrorCode code, const char* format, ...) {
    MoemlaError* error = (MoemlaError*)calloc(1, sizeof(MoemlaError));
    va_list args;
    if (error == NULL) {
        return &out_of_memory_error;
    }
    error->code = code;
    va_start(args, format);
    vsnprintf(error->message, sizeof(error->message), format, args);
    va_end(args);
    return error;
}

MoemlaError* ex_index_error(const char* arg, size_t position, int64_t value) {
    MoemlaError* error = ex_error(MOEMLA_ERROR_INDEX_OUT_OF_RANGE,
                                  "example: `%s` element %zu = %lld is out of range", arg,
                                  position, (long long)value);
    if (!error->is_static) {
        error->index_arg = arg;
        error->index_position = position;
        error->index_value = value;
    }
    return error;
}

static void ex_error_get(const MoemlaError* error, MoemlaErrorInfo* info) {
    /* Write only the fields the caller's struct has (it may be an older, smaller one). */
    if (MOEMLA_STRUCT_HAS(MoemlaErrorInfo, info, code)) info->code = error->code;
    if (MOEMLA_STRUCT_HAS(MoemlaErrorInfo, info, message)) info->message = error->message;
    if (MOEMLA_STRUCT_HAS(MoemlaErrorInfo, info, index_arg)) info->index_arg = error->index_arg;
    if (MOEMLA_STRUCT_HAS(MoemlaErrorInfo, info, index_position)) {
        info->index_position = error->index_position;
    }
    if (MOEMLA_STRUCT_HAS(MoemlaErrorInfo, info, index_value)) {
        info->index_value = error->index_value;
    }
}

static void ex_error_free(MoemlaError* error) {
    if (error != NULL && !error->is_static) {
        free(error);
    }
}

/* ---- Plugin and device information --------------------------------------------------- */

static MoemlaError* ex_plugin_info(MoemlaPluginInfoArgs* args) {
    EX_REQUIRE_SIZE(MoemlaPluginInfoArgs, args, verification_detail);
    args->name = "example_c";
    args->vendor = "moemla example plugin (C99)";
    /* Claim what has been checked. Change it only after `moemla conformance --plugin`
     * passed on your hardware, and say where in the detail. */
    args->verification_kind = MOEMLA_VERIFICATION_UNVERIFIED;
    args->verification_detail =
        "example plugin: run `moemla conformance --plugin` on your device and publish the "
        "report before claiming more";
    return NULL;
}

/* The device: this plugin has no state, but each open gets its own object, as a GPU
 * plugin's context and queue would be. */
struct MoemlaDevice {
    int unused;
};

static MoemlaError* ex_device_open(MoemlaDeviceOpenArgs* args) {
    EX_REQUIRE_SIZE(MoemlaDeviceOpenArgs, args, device);
    args->device = (MoemlaDevice*)calloc(1, sizeof(MoemlaDevice));
    if (args->device == NULL) {
        return ex_error(MOEMLA_ERROR_OUT_OF_MEMORY, "example: cannot allocate a device");
    }
    return NULL;
}

static void ex_device_close(MoemlaDeviceCloseArgs* args) {
    if (args != NULL && MOEMLA_STRUCT_HAS(MoemlaDeviceCloseArgs, args, device)) {
        free(args->device);
    }
}

/* Every v1 op in every float run dtype. */
static const MoemlaOpSupport ex_supported[] = {
    {MOEMLA_OP_MOE_ROUTE, MOEMLA_DTYPE_F32},   {MOEMLA_OP_MOE_ROUTE, MOEMLA_DTYPE_F16},
    {MOEMLA_OP_MOE_ROUTE, MOEMLA_DTYPE_BF16},  {MOEMLA_OP_MOE_EXPERTS, MOEMLA_DTYPE_F32},
    {MOEMLA_OP_MOE_EXPERTS, MOEMLA_DTYPE_F16}, {MOEMLA_OP_MOE_EXPERTS, MOEMLA_DTYPE_BF16},
    {MOEMLA_OP_MLA_DECODE, MOEMLA_DTYPE_F32},  {MOEMLA_OP_MLA_DECODE, MOEMLA_DTYPE_F16},
    {MOEMLA_OP_MLA_DECODE, MOEMLA_DTYPE_BF16},
};

static const char* const ex_notes[] = {
    "single-threaded scalar C99 reference loops (f32 math); copy it, do not benchmark it",
};

static MoemlaError* ex_device_info(MoemlaDeviceInfoArgs* args) {
    EX_REQUIRE_SIZE(MoemlaDeviceInfoArgs, args, num_notes);
    args->device_name = "host CPU";
    args->device_type = MOEMLA_DEVICE_TYPE_CPU;
    args->memory_bytes = 0; /* unknown */
    args->supported = ex_supported;
    args->num_supported = sizeof(ex_supported) / sizeof(ex_supported[0]);
    args->notes = ex_notes;
    args->num_notes = sizeof(ex_notes) / sizeof(ex_notes[0]);
    return NULL;
}

/* ---- Buffers ------------------------------------------------------------------------ */

/* A buffer of `size` bytes, zero-filled; malloc(0) may return NULL, so ask for >= 1. */
static MoemlaBuffer* ex_new_buffer(size_t size) {
    MoemlaBuffer* buffer = (MoemlaBuffer*)malloc(sizeof(MoemlaBuffer));
    if (buffer == NULL) {
        return NULL;
    }
    buffer->size = size;
    buffer->data = (unsigned char*)calloc(size > 0 ? size : 1, 1);
    if (buffer->data == NULL) {
        free(buffer);
        return NULL;
    }
    return buffer;
}

static MoemlaError* ex_buffer_alloc(MoemlaBufferAllocArgs* args) {
    EX_REQUIRE_SIZE(MoemlaBufferAllocArgs, args, buffer);
    /* calloc zero-fills, so zero_fill needs no extra work here; a device plugin would
     * memset only when args->zero_fill is 1. */
    args->buffer = ex_new_buffer(args->size_in_bytes);
    if (args->buffer == NULL) {
        return ex_error(MOEMLA_ERROR_OUT_OF_MEMORY, "example: cannot allocate %zu bytes",
                        args->size_in_bytes);
    }
    return NULL;
}

static MoemlaError* ex_buffer_from_host(MoemlaBufferFromHostArgs* args) {
    EX_REQUIRE_SIZE(MoemlaBufferFromHostArgs, args, buffer);
    args->buffer = ex_new_buffer(args->size_in_bytes);
    if (args->buffer == NULL) {
        return ex_error(MOEMLA_ERROR_OUT_OF_MEMORY, "example: cannot allocate %zu bytes",
                        args->size_in_bytes);
    }
    if (args->size_in_bytes > 0) {
        memcpy(args->buffer->data, args->host_data, args->size_in_bytes);
    }
    return NULL;
}

static MoemlaError* ex_buffer_to_host(MoemlaBufferToHostArgs* args) {
    EX_REQUIRE_SIZE(MoemlaBufferToHostArgs, args, size_in_bytes);
    if (args->buffer == NULL || args->size_in_bytes != args->buffer->size) {
        return ex_error(MOEMLA_ERROR_INVALID_ARGUMENT,
                        "example: buffer_to_host of %zu bytes from a buffer of %zu",
                        args->size_in_bytes,
                        (args->buffer ? args->buffer->size : (size_t)0));
    }
    if (args->size_in_bytes > 0) {
        memcpy(args->host_data, args->buffer->data, args->size_in_bytes);
    }
    return NULL;
}

static void ex_buffer_free(MoemlaBufferFreeArgs* args) {
    if (args != NULL && MOEMLA_STRUCT_HAS(MoemlaBufferFreeArgs, args, buffer) &&
        args->buffer != NULL) {
        free(args->buffer->data);
        free(args->buffer);
    }
}

static MoemlaError* ex_synchronize(MoemlaSynchronizeArgs* args) {
    EX_REQUIRE_SIZE(MoemlaSynchronizeArgs, args, device);
    return NULL; /* every op has finished when it returns */
}

/* ---- The table and the entry point -------------------------------------------------- */

static const MoemlaPluginApi ex_api = {
    MOEMLA_EXAMPLE_API_STRUCT_SIZE,
    MOEMLA_EXAMPLE_ABI_MAJOR,
    MOEMLA_EXAMPLE_ABI_MINOR,
    ex_error_get,
    ex_error_free,
    ex_plugin_info,
    ex_device_open,
    ex_device_close,
    ex_device_info,
    ex_buffer_alloc,
    ex_buffer_from_host,
    ex_buffer_to_host,
    ex_buffer_free,
    ex_synchronize,
    ex_moe_route,
    ex_moe_experts,
    ex_mla_decode,
};

MOEMLA_PLUGIN_EXPORT const MoemlaPluginApi* moemla_plugin_get_api(void) {
    return &ex_api;
}
