//! The two-phase aclnn protocol: `aclnnXxxGetWorkspaceSize(..., uint64_t *workspaceSize,
//! aclOpExecutor **executor)` checks the arguments and returns an executor; then
//! `aclnnXxx(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
//! aclrtStream stream)` runs it on the stream ("两段式接口", every aclnn op page, e.g.
//! <https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnMoeGatingTopK.md>).
//!
//! The emulator enforces what the protocol implies: an executor is used once (CANN frees it
//! after the launch unless made repeatable), only by the op that made it, with a workspace
//! of at least the size asked for that lies in device memory.
//!
//! Fault injection, for tests of a caller's failure paths: `MOEMLA_CANN_EMULATOR_REJECT` =
//! comma-separated op names (e.g. `aclnnMoeGatingTopK`) makes those ops' first phase fail
//! with ACLNN_ERR_INNER_TILING_ERROR, as CANN's tiling does for inputs it cannot run.

use crate::memory::{heap, range_mut};
use crate::runtime::{enqueue, Task};
use crate::status::{
    report, status, EmuResult, Fail, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_PARAM_NULLPTR,
};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Workspace every emulated op asks for: non-zero, so callers must allocate and pass it.
pub const WORKSPACE_BYTES: u64 = 4096;

struct Executor {
    op: &'static str,
    workspace: u64,
    run: Task,
}

static NEXT: AtomicUsize = AtomicUsize::new(0xE000);
static EXECUTORS: Mutex<Option<HashMap<usize, Executor>>> = Mutex::new(None);

fn with_executors<R>(f: impl FnOnce(&mut HashMap<usize, Executor>) -> R) -> R {
    let mut guard = EXECUTORS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Whether `MOEMLA_CANN_EMULATOR_REJECT` names `op` (see the module doc).
fn injected_rejection(op: &str) -> bool {
    std::env::var("MOEMLA_CANN_EMULATOR_REJECT")
        .is_ok_and(|names| names.split(',').any(|n| n.trim() == op))
}

/// Phase one: `check` validates the arguments and returns the computation; on success the
/// workspace size and a new executor handle are written to the out-pointers.
///
/// # Safety
/// `workspace_size` and `executor` must be null or writable.
pub unsafe fn prepare(
    op: &'static str,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
    check: impl FnOnce() -> EmuResult<Task>,
) -> i32 {
    if workspace_size.is_null() || executor.is_null() {
        return report(Fail::new(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{op}GetWorkspaceSize: workspaceSize or executor is a null pointer"),
        ));
    }
    if injected_rejection(op) {
        return report(Fail::new(
            ACLNN_ERR_INNER_TILING_ERROR,
            format!("{op}GetWorkspaceSize: rejected by MOEMLA_CANN_EMULATOR_REJECT"),
        ));
    }
    let run = match check() {
        Ok(run) => run,
        Err(fail) => {
            return report(Fail::new(
                fail.code,
                format!("{op}GetWorkspaceSize: {}", fail.message),
            ))
        }
    };
    let id = NEXT.fetch_add(16, Ordering::SeqCst);
    with_executors(|e| {
        e.insert(
            id,
            Executor {
                op,
                workspace: WORKSPACE_BYTES,
                run,
            },
        )
    });
    // SAFETY: both checked non-null above.
    unsafe {
        *workspace_size = WORKSPACE_BYTES;
        *executor = id as *mut c_void;
    }
    0
}

/// Phase two: checks executor, workspace and stream, then queues the computation.
pub fn launch(
    op: &'static str,
    workspace: *mut c_void,
    workspace_size: u64,
    executor: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    status((|| {
        crate::runtime::require_device(op)?;
        if executor.is_null() {
            return Err(Fail::new(
                ACLNN_ERR_PARAM_NULLPTR,
                format!("{op}: executor is null"),
            ));
        }
        let exec = with_executors(|e| e.remove(&(executor as usize))).ok_or_else(|| {
            Fail::invalid(format!(
                "{op}: executor {executor:p} is unknown or was already used"
            ))
        })?;
        if exec.op != op {
            return Err(Fail::invalid(format!(
                "{op}: executor {executor:p} was created by {}GetWorkspaceSize",
                exec.op
            )));
        }
        if workspace_size < exec.workspace {
            return Err(Fail::invalid(format!(
                "{op}: workspaceSize {workspace_size} is less than the {} bytes \
                 {op}GetWorkspaceSize asked for",
                exec.workspace
            )));
        }
        if exec.workspace > 0 {
            let mut h = heap();
            range_mut(
                &mut h,
                workspace as usize,
                exec.workspace as usize,
                "workspace",
            )
            .map_err(|f| Fail::invalid(format!("{op}: {}", f.message)))?;
        }
        let run = exec.run;
        enqueue(
            stream,
            Box::new(move || run().map_err(|f| Fail::new(f.code, format!("{op}: {}", f.message)))),
        )
    })())
}
