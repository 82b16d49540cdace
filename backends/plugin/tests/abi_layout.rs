//! The Rust mirror (`moemla_plugin::ffi`) and the C header agree byte for byte: every
//! field offset, every struct's `sizeof` and `MOEMLA_STRUCT_SIZE`, and every constant, as
//! the system C compiler lays them out from include/moemla_plugin.h.

mod common;

use moemla_plugin::ffi::{self, SizedStruct};
use std::collections::BTreeMap;

/// For each struct: one C `printf` per field offset, its `sizeof` and (for structs with
/// `struct_size`) its `MOEMLA_STRUCT_SIZE`, and the same values computed in Rust.
macro_rules! layouts {
    ($c:ident, $rust:ident; $($ty:ident [$($field:ident),+] $(last $last:ident)?;)+) => {
        $(
            $(
                $c.push_str(&format!(
                    "    printf(\"{0}.{1} %lu\\n\", (unsigned long)offsetof({0}, {1}));\n",
                    stringify!($ty),
                    stringify!($field)
                ));
                $rust.insert(
                    format!("{}.{}", stringify!($ty), stringify!($field)),
                    std::mem::offset_of!(ffi::$ty, $field) as u64,
                );
            )+
            $c.push_str(&format!(
                "    printf(\"{0} sizeof %lu\\n\", (unsigned long)sizeof({0}));\n",
                stringify!($ty)
            ));
            $rust.insert(
                format!("{} sizeof", stringify!($ty)),
                std::mem::size_of::<ffi::$ty>() as u64,
            );
            $(
                $c.push_str(&format!(
                    "    printf(\"{0} struct_size %lu\\n\", \
                     (unsigned long)MOEMLA_STRUCT_SIZE({0}, {1}));\n",
                    stringify!($ty),
                    stringify!($last)
                ));
                $rust.insert(
                    format!("{} struct_size", stringify!($ty)),
                    <ffi::$ty as SizedStruct>::STRUCT_SIZE as u64,
                );
            )?
        )+
    };
}

/// For each constant: a C `printf` of the header's macro and the Rust value.
macro_rules! constants {
    ($c:ident, $rust:ident; $($macro:ident = $value:expr;)+) => {
        $(
            $c.push_str(&format!(
                "    printf(\"{0} %ld\\n\", (long)({0}));\n",
                stringify!($macro)
            ));
            $rust.insert(stringify!($macro).to_string(), $value as u64);
        )+
    };
}

#[test]
fn rust_mirror_matches_the_c_header() {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"moemla_plugin.h\"\n\
         int main(void) {\n",
    );
    let mut rust = BTreeMap::new();
    layouts!(c, rust;
        MoemlaErrorInfo [struct_size, code, message, index_arg, index_position, index_value]
            last index_value;
        MoemlaPluginInfoArgs [struct_size, name, vendor, verification_kind, verification_detail]
            last verification_detail;
        MoemlaDeviceOpenArgs [struct_size, device] last device;
        MoemlaDeviceCloseArgs [struct_size, device] last device;
        MoemlaOpSupport [op, dtype];
        MoemlaDeviceInfoArgs [struct_size, device, device_name, device_type, memory_bytes,
            supported, num_supported, notes, num_notes] last num_notes;
        MoemlaBufferAllocArgs [struct_size, device, size_in_bytes, dtype, zero_fill, buffer]
            last buffer;
        MoemlaBufferFromHostArgs [struct_size, device, host_data, size_in_bytes, dtype, buffer]
            last buffer;
        MoemlaBufferToHostArgs [struct_size, device, buffer, host_data, size_in_bytes]
            last size_in_bytes;
        MoemlaBufferFreeArgs [struct_size, device, buffer] last buffer;
        MoemlaSynchronizeArgs [struct_size, device] last device;
        MoemlaMoeRouteArgs [struct_size, device, logits, logits_dtype, bias, tokens, experts,
            score_func, group_select, top_k, n_group, topk_group, renormalize,
            routed_scaling_factor, topk_ids, topk_weights] last topk_weights;
        MoemlaMoeExpertsArgs [struct_size, device, dtype, x, w13, w2, topk_ids, topk_weights,
            tokens, hidden, inter, experts, top_k, y] last y;
        MoemlaMlaDecodeArgs [struct_size, device, dtype, q, kv_cache, block_table,
            cache_seqlens, batch, s_q, h_q, h_kv, d_qk, d_v, num_blocks, block_size,
            max_blocks, softmax_scale, causal, o, lse] last lse;
        MoemlaPluginApi [struct_size, abi_version_major, abi_version_minor, error_get,
            error_free, plugin_info, device_open, device_close, device_info, buffer_alloc,
            buffer_from_host, buffer_to_host, buffer_free, synchronize, moe_route,
            moe_experts, mla_decode] last mla_decode;
    );
    constants!(c, rust;
        MOEMLA_PLUGIN_ABI_MAJOR = ffi::ABI_MAJOR;
        MOEMLA_PLUGIN_ABI_MINOR = ffi::ABI_MINOR;
        MOEMLA_PLUGIN_API_STRUCT_SIZE = ffi::MoemlaPluginApi::STRUCT_SIZE;
        MOEMLA_DTYPE_F32 = ffi::DTYPE_F32;
        MOEMLA_DTYPE_F16 = ffi::DTYPE_F16;
        MOEMLA_DTYPE_BF16 = ffi::DTYPE_BF16;
        MOEMLA_DTYPE_I32 = ffi::DTYPE_I32;
        MOEMLA_DTYPE_F8E4M3 = ffi::DTYPE_F8E4M3;
        MOEMLA_DTYPE_U8 = ffi::DTYPE_U8;
        MOEMLA_OP_MOE_ROUTE = ffi::OP_MOE_ROUTE;
        MOEMLA_OP_MOE_EXPERTS = ffi::OP_MOE_EXPERTS;
        MOEMLA_OP_MLA_DECODE = ffi::OP_MLA_DECODE;
        MOEMLA_ERROR_INVALID_ARGUMENT = ffi::ERROR_INVALID_ARGUMENT;
        MOEMLA_ERROR_INDEX_OUT_OF_RANGE = ffi::ERROR_INDEX_OUT_OF_RANGE;
        MOEMLA_ERROR_UNSUPPORTED = ffi::ERROR_UNSUPPORTED;
        MOEMLA_ERROR_OUT_OF_MEMORY = ffi::ERROR_OUT_OF_MEMORY;
        MOEMLA_ERROR_UNAVAILABLE = ffi::ERROR_UNAVAILABLE;
        MOEMLA_ERROR_DEVICE = ffi::ERROR_DEVICE;
        MOEMLA_VERIFICATION_UNVERIFIED = ffi::VERIFICATION_UNVERIFIED;
        MOEMLA_VERIFICATION_SILICON = ffi::VERIFICATION_SILICON;
        MOEMLA_VERIFICATION_EMULATOR = ffi::VERIFICATION_EMULATOR;
        MOEMLA_VERIFICATION_COMPILE_ONLY = ffi::VERIFICATION_COMPILE_ONLY;
        MOEMLA_DEVICE_TYPE_OTHER = ffi::DEVICE_TYPE_OTHER;
        MOEMLA_DEVICE_TYPE_CPU = ffi::DEVICE_TYPE_CPU;
        MOEMLA_DEVICE_TYPE_GPU = ffi::DEVICE_TYPE_GPU;
        MOEMLA_DEVICE_TYPE_NPU = ffi::DEVICE_TYPE_NPU;
        MOEMLA_DEVICE_TYPE_EMULATOR = ffi::DEVICE_TYPE_EMULATOR;
        MOEMLA_SCORE_FUNC_SIGMOID = ffi::SCORE_FUNC_SIGMOID;
        MOEMLA_SCORE_FUNC_SOFTMAX = ffi::SCORE_FUNC_SOFTMAX;
        MOEMLA_GROUP_SELECT_MAX = ffi::GROUP_SELECT_MAX;
        MOEMLA_GROUP_SELECT_TOP2_SUM = ffi::GROUP_SELECT_TOP2_SUM;
    );
    c.push_str("    printf(\"entry %s\\n\", MOEMLA_PLUGIN_ENTRY_POINT);\n    return 0;\n}\n");
    let Some(output) = common::built_or_skip(common::run_program("abi_layout", &c)) else {
        return;
    };
    let mut from_c = BTreeMap::new();
    let mut entry = None;
    for line in output.lines() {
        let (key, value) = line.rsplit_once(' ').expect("key value");
        if key == "entry" {
            entry = Some(value.to_string());
        } else {
            from_c.insert(key.to_string(), value.parse::<u64>().expect("a number"));
        }
    }
    assert_eq!(entry.as_deref(), Some(ffi::ENTRY_POINT));
    let differ: Vec<_> = rust
        .iter()
        .filter(|(k, v)| from_c.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: Rust {v}, C {:?}", from_c.get(k)))
        .collect();
    assert!(differ.is_empty(), "layouts differ:\n{}", differ.join("\n"));
    assert_eq!(from_c.len(), rust.len());
}
