//! Kernel launches: arguments, the checks of geometry and local memory against the device
//! (refused before the runtime sees them), and the enqueue.

use crate::buffer::ClBuffer;
use crate::device::ClDevice;
use crate::error::cl;
use moemla_core::{Error, Result};
use opencl3::program::Program;
use std::ptr;

/// One kernel argument.
pub enum Arg<'a> {
    /// A buffer.
    Buf(&'a ClBuffer),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
    /// A `__local` buffer of this many bytes.
    Local(usize),
}

impl ClDevice {
    /// Enqueues kernel `name` of `program` over `global` work-items in groups of `local`
    /// (an empty `local` lets the runtime choose). Geometry and local memory the device
    /// cannot run are refused here with an error, never handed to the runtime (PoCL aborts
    /// on local memory beyond the device's); ops check their needs first and report them
    /// as `Unsupported`.
    pub fn launch(
        &self,
        program: &Program,
        name: &str,
        args: &[Arg<'_>],
        global: &[usize],
        local: &[usize],
    ) -> Result<()> {
        let refuse = |message: String| Error::Device {
            backend: crate::NAME.to_string(),
            call: "clEnqueueNDRangeKernel".to_string(),
            message: format!("{name}: {message} (refused before launch)"),
        };
        if global.is_empty()
            || global.len() > 3
            || !(local.is_empty() || local.len() == global.len())
        {
            return Err(refuse(format!("global {global:?} with local {local:?}")));
        }
        if global.contains(&0) {
            return Ok(());
        }
        let facts = &self.facts;
        let group = local.iter().try_fold(1usize, |n, &l| n.checked_mul(l));
        let fits = |(d, (&g, &l)): (usize, (&usize, &usize))| {
            l > 0
                && g.is_multiple_of(l)
                && facts.max_work_item_sizes.get(d).is_some_and(|&m| l <= m)
        };
        if group.is_none_or(|n| n > facts.max_work_group)
            || !global.iter().zip(local).enumerate().all(fits)
        {
            return Err(refuse(format!(
                "global {global:?} in groups of {local:?} (the device allows groups of {} \
                 work-items, {:?} per dimension)",
                facts.max_work_group, facts.max_work_item_sizes
            )));
        }
        let dynamic_local = args
            .iter()
            .map(|a| match a {
                Arg::Local(bytes) => (*bytes).max(4) as u64,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add);
        if dynamic_local > facts.local_mem {
            return Err(refuse(format!(
                "{dynamic_local} bytes of local memory (the device has {})",
                facts.local_mem
            )));
        }
        // This launch's own kernel object (arguments are per object), reused across launches.
        let kernel = self.programs.kernel(program, name)?;
        for (i, arg) in args.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| refuse(format!("{} arguments", args.len())))?;
            // SAFETY: each value has the size and type of the kernel's parameter `i`
            // (cl_mem for buffers, int, float), checked by the OpenCL runtime.
            let set = unsafe {
                match arg {
                    Arg::Buf(b) => kernel.set_arg(i, &b.raw()),
                    Arg::I32(v) => kernel.set_arg(i, v),
                    Arg::F32(v) => kernel.set_arg(i, v),
                    Arg::Local(bytes) => kernel.set_arg_local_buffer(i, (*bytes).max(4)),
                }
            };
            set.map_err(cl("clSetKernelArg"))?;
        }
        // The kernel's own limits: static plus argument local memory, and its largest group.
        let device = self.context.default_device();
        let used = kernel
            .get_local_mem_size(device)
            .map_err(cl("clGetKernelWorkGroupInfo"))?;
        let largest = kernel
            .get_work_group_size(device)
            .map_err(cl("clGetKernelWorkGroupInfo"))?;
        if used > facts.local_mem || group.is_some_and(|n| n > largest) {
            return Err(refuse(format!(
                "{used} bytes of local memory and groups of {local:?} (the device has {} \
                 bytes; this kernel runs groups of at most {largest})",
                facts.local_mem
            )));
        }
        // SAFETY: all arguments are set; `global` has 1..=3 entries and `local` is empty
        // (null) or has as many (checked above), both live across the call; every buffer
        // argument is kept alive by the caller's `Arc`s until the queue has used it
        // (released objects outlive queued commands).
        unsafe {
            self.queue.enqueue_nd_range_kernel(
                kernel.get(),
                global.len() as u32,
                ptr::null(),
                global.as_ptr(),
                if local.is_empty() {
                    ptr::null()
                } else {
                    local.as_ptr()
                },
                &[],
            )
        }
        .map_err(cl("clEnqueueNDRangeKernel"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::build_source;

    #[test]
    fn launch_refuses_what_the_device_cannot_run() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let src = "__kernel void k(__global int *p, __local int *l) { \
                   l[get_local_id(0)] = 1; barrier(CLK_LOCAL_MEM_FENCE); \
                   p[get_global_id(0)] = l[0]; }";
        let program = build_source(&dev.context, src, "-cl-std=CL1.2", "test").unwrap();
        let out = dev.alloc_zeroed("test", 4 * 4096).unwrap();
        let refused = |local_bytes: usize, global: &[usize], local: &[usize], why: &str| {
            let args = [Arg::Buf(&out), Arg::Local(local_bytes)];
            match dev.launch(&program, "k", &args, global, local) {
                Err(Error::Device { message, .. }) => {
                    assert!(message.contains(why), "{message}");
                    assert!(message.contains("refused before launch"), "{message}");
                }
                other => panic!("expected a refusal ({why}), got {:?}", other.map(|_| ())),
            }
        };
        // PoCL aborts on local memory beyond the device's; the launch must refuse it.
        let local_mem = usize::try_from(dev.facts.local_mem).unwrap();
        refused(local_mem + 4, &[64], &[64], "local memory");
        refused(usize::MAX, &[64], &[64], "local memory");
        let too_wide = dev.facts.max_work_group * 2;
        refused(4 * too_wide, &[too_wide], &[too_wide], "groups of");
        refused(256, &[65], &[64], "groups of");
        refused(256, &[64, 1], &[64], "global");
        // What fits runs.
        dev.launch(
            &program,
            "k",
            &[Arg::Buf(&out), Arg::Local(256)],
            &[128],
            &[64],
        )
        .unwrap();
        let mut got = [0u8; 4];
        dev.read(&out, 4 * 127, &mut got).unwrap();
        assert_eq!(i32::from_le_bytes(got), 1);
    }
}
