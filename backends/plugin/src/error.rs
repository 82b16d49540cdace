//! A plugin's error objects turned into `moemla_core::Error`: read with `error_get`,
//! copied, released with exactly one `error_free`, then mapped by code.

use crate::ffi::{self, SizedStruct};
use crate::loader::Plugin;
use moemla_core::{Error, Op, Shape};
use std::ffi::{c_char, CStr};

/// One index tensor of an op call, as an index error may name it.
pub(crate) struct IndexArg<'a> {
    /// The argument name, as the header spells it.
    pub name: &'static str,
    /// Its shape (to turn the linear position into one index per dimension).
    pub shape: &'a Shape,
    /// Its valid range, worded as `moemla_core::indices` words it.
    pub valid: String,
}

/// What was being called when an error came back.
pub(crate) struct Context<'a> {
    /// The backend's name (the file's while the plugin has none yet).
    backend: &'a str,
    /// The plugin function.
    call: &'static str,
    /// The op, for op calls.
    op: Option<Op>,
    /// The bytes asked for, for allocations.
    bytes: Option<usize>,
    /// The op's index tensors.
    indices: &'a [IndexArg<'a>],
}

impl<'a> Context<'a> {
    /// A plain call (`plugin_info`, `buffer_to_host`, `synchronize`, ...).
    pub fn call(backend: &'a str, call: &'static str) -> Self {
        Context {
            backend,
            call,
            op: None,
            bytes: None,
            indices: &[],
        }
    }

    /// An allocation of `bytes` bytes.
    pub fn alloc(backend: &'a str, call: &'static str, bytes: usize) -> Self {
        Context {
            bytes: Some(bytes),
            ..Context::call(backend, call)
        }
    }

    /// An op call with its index tensors.
    pub fn op(backend: &'a str, op: Op, indices: &'a [IndexArg<'a>]) -> Self {
        Context {
            op: Some(op),
            indices,
            ..Context::call(backend, op.name())
        }
    }
}

/// What a plugin's error said, copied out of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reported {
    /// `MOEMLA_ERROR_*`.
    pub code: i32,
    /// The message.
    pub message: String,
    /// Index errors: the argument, position and value.
    pub index: Option<(String, usize, i64)>,
}

/// Reads, copies and releases `err`, and maps it to an [`Error`].
///
/// # Safety
/// `err` must be a non-null error object returned by one of `plugin`'s functions and not
/// yet released; it is released here.
pub(crate) unsafe fn take_error(
    plugin: &Plugin,
    err: *mut ffi::MoemlaError,
    ctx: &Context<'_>,
) -> Error {
    let mut info = ffi::MoemlaErrorInfo::zeroed();
    // SAFETY: `err` is live (caller's contract); `info` is a zeroed ABI 1.0 struct.
    unsafe { (plugin.fns.error_get)(err, &mut info) };
    // SAFETY: the strings are owned by `err`, which is still live; they are copied here.
    let (message, arg) = unsafe { (cstr(info.message), cstr(info.index_arg)) };
    let reported = Reported {
        code: info.code,
        message: message.unwrap_or_else(|| "(the plugin gave no message)".to_string()),
        index: arg.map(|a| (a, info.index_position, info.index_value)),
    };
    // SAFETY: released exactly once, after its strings were copied.
    unsafe { (plugin.fns.error_free)(err) };
    convert(reported, ctx)
}

/// Maps a reported error to the contract's error for the call in `ctx`.
pub(crate) fn convert(r: Reported, ctx: &Context<'_>) -> Error {
    let backend = ctx.backend.to_string();
    let device = |message: String| Error::Device {
        backend: backend.clone(),
        call: ctx.call.to_string(),
        message,
    };
    match (r.code, ctx.op, ctx.bytes) {
        (ffi::ERROR_INDEX_OUT_OF_RANGE, Some(op), _) => {
            index_error(r, op, ctx.indices).unwrap_or_else(device)
        }
        (ffi::ERROR_UNSUPPORTED, Some(op), _) => Error::Unsupported {
            backend,
            op,
            what: "these parameters".to_string(),
            reason: r.message,
        },
        (ffi::ERROR_OUT_OF_MEMORY, _, Some(bytes)) => Error::OutOfMemory {
            what: format!("{} {} ({})", ctx.backend, ctx.call, r.message),
            bytes,
        },
        (ffi::ERROR_UNAVAILABLE, None, None) => Error::Unavailable {
            backend,
            reason: r.message,
        },
        (code, _, _) => device(format!("{}: {}", code_name(code), r.message)),
    }
}

/// The contract's `IndexOutOfRange` for an index error the plugin reported, or why the
/// report cannot be one (an argument the op does not have, a position past its end).
fn index_error(r: Reported, op: Op, indices: &[IndexArg<'_>]) -> Result<Error, String> {
    let Some((arg, position, value)) = r.index else {
        return Err(format!(
            "the plugin reported an index error without naming the argument: {}",
            r.message
        ));
    };
    let Some(known) = indices.iter().find(|a| a.name == arg) else {
        let names: Vec<_> = indices.iter().map(|a| a.name).collect();
        return Err(format!(
            "the plugin reported an index error in `{arg}`, which is not an index argument \
             of {op} (those are {names:?}): {}",
            r.message
        ));
    };
    if position >= known.shape.elem_count() {
        return Err(format!(
            "the plugin reported an index error at position {position} of `{arg}`, which \
             has {} elements: {}",
            known.shape.elem_count(),
            r.message
        ));
    }
    Ok(Error::index_out_of_range(
        op,
        known.name,
        known.shape,
        position,
        value,
        known.valid.clone(),
    ))
}

/// The header's name of an error code.
fn code_name(code: i32) -> String {
    match code {
        ffi::ERROR_INVALID_ARGUMENT => "MOEMLA_ERROR_INVALID_ARGUMENT".into(),
        ffi::ERROR_INDEX_OUT_OF_RANGE => "MOEMLA_ERROR_INDEX_OUT_OF_RANGE".into(),
        ffi::ERROR_UNSUPPORTED => "MOEMLA_ERROR_UNSUPPORTED".into(),
        ffi::ERROR_OUT_OF_MEMORY => "MOEMLA_ERROR_OUT_OF_MEMORY".into(),
        ffi::ERROR_UNAVAILABLE => "MOEMLA_ERROR_UNAVAILABLE".into(),
        ffi::ERROR_DEVICE => "MOEMLA_ERROR_DEVICE".into(),
        other => format!("unknown error code {other}"),
    }
}

/// A copy of a NUL-terminated string the plugin handed out (`None` for NULL), invalid
/// UTF-8 replaced.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (caller's contract).
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(arg: &str, position: usize, value: i64) -> Reported {
        Reported {
            code: ffi::ERROR_INDEX_OUT_OF_RANGE,
            message: "bad".into(),
            index: Some((arg.into(), position, value)),
        }
    }

    #[test]
    fn index_errors_become_the_contracts_error_with_positions_per_dimension() {
        let shape = Shape::new([3, 4]);
        let args = [IndexArg {
            name: "block_table",
            shape: &shape,
            valid: "[0, 5) (num_blocks)".into(),
        }];
        let ctx = Context::op("acme", Op::MlaDecode, &args);
        let got = convert(index("block_table", 6, -2), &ctx);
        assert_eq!(
            got,
            Error::IndexOutOfRange {
                op: Op::MlaDecode,
                arg: "block_table",
                index: vec![1, 2],
                value: -2,
                valid: "[0, 5) (num_blocks)".into(),
            }
        );
    }

    #[test]
    fn implausible_index_reports_are_device_errors() {
        let shape = Shape::new([3, 4]);
        let args = [IndexArg {
            name: "topk_ids",
            shape: &shape,
            valid: "[-1, 4)".into(),
        }];
        let ctx = Context::op("acme", Op::MoeExperts, &args);
        for (r, says) in [
            (
                index("topk_ids", 12, 9),
                "position 12 of `topk_ids`, which has 12",
            ),
            (index("w13", 0, 9), "`w13`, which is not an index argument"),
            (
                Reported {
                    index: None,
                    ..index("topk_ids", 0, 0)
                },
                "without naming the argument",
            ),
        ] {
            match convert(r, &ctx) {
                Error::Device {
                    backend,
                    call,
                    message,
                } => {
                    assert_eq!((backend.as_str(), call.as_str()), ("acme", "moe_experts"));
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected a device error, got {other:?}"),
            }
        }
    }

    #[test]
    fn codes_map_to_their_errors() {
        let r = |code| Reported {
            code,
            message: "why".into(),
            index: None,
        };
        let op = Context::op("acme", Op::MoeRoute, &[]);
        assert_eq!(
            convert(r(ffi::ERROR_UNSUPPORTED), &op),
            Error::Unsupported {
                backend: "acme".into(),
                op: Op::MoeRoute,
                what: "these parameters".into(),
                reason: "why".into(),
            }
        );
        assert_eq!(
            convert(
                r(ffi::ERROR_OUT_OF_MEMORY),
                &Context::alloc("acme", "buffer_alloc", 64)
            ),
            Error::OutOfMemory {
                what: "acme buffer_alloc (why)".into(),
                bytes: 64,
            }
        );
        assert_eq!(
            convert(
                r(ffi::ERROR_UNAVAILABLE),
                &Context::call("acme", "device_open")
            ),
            Error::Unavailable {
                backend: "acme".into(),
                reason: "why".into(),
            }
        );
        assert_eq!(
            convert(r(77), &Context::call("acme", "synchronize")),
            Error::Device {
                backend: "acme".into(),
                call: "synchronize".into(),
                message: "unknown error code 77: why".into(),
            }
        );
        assert_eq!(
            convert(r(ffi::ERROR_OUT_OF_MEMORY), &op),
            Error::Device {
                backend: "acme".into(),
                call: "moe_route".into(),
                message: "MOEMLA_ERROR_OUT_OF_MEMORY: why".into(),
            }
        );
    }
}
