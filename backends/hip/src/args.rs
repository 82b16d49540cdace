//! Kernel parameters for `hipModuleLaunchKernel`.

use std::ffi::c_void;

/// Kernel parameters as `hipModuleLaunchKernel` wants them: one 8-byte slot per parameter
/// holding its value in the low bytes (little-endian), pointed to by `kernelParams`.
#[derive(Default)]
pub(crate) struct KernelArgs {
    slots: Vec<u64>,
}

impl KernelArgs {
    /// A device pointer parameter.
    pub(crate) fn ptr(&mut self, p: *mut c_void) -> &mut Self {
        self.slots.push(p as usize as u64);
        self
    }
    /// An `int` parameter.
    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.slots.push(v as u32 as u64);
        self
    }
    /// A `float` parameter.
    pub(crate) fn f32(&mut self, v: f32) -> &mut Self {
        self.slots.push(v.to_bits() as u64);
        self
    }
    pub(crate) fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| (s as *mut u64).cast())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::KernelArgs;

    #[test]
    fn kernel_args_point_at_each_value_in_its_c_type() {
        let mut args = KernelArgs::default();
        let p = 0x1234_5678_9abc_def0usize as *mut std::ffi::c_void;
        args.ptr(p).i32(-7).f32(0.135).i32(i32::MAX);
        let ptrs = args.pointers();
        assert_eq!(ptrs.len(), 4);
        // SAFETY: each pointer addresses an 8-byte slot of `args`, alive here; the kernel
        // reads as many bytes as its parameter's type has, from the slot's start.
        unsafe {
            assert_eq!(*(ptrs[0] as *const usize), 0x1234_5678_9abc_def0);
            assert_eq!(*(ptrs[1] as *const i32), -7);
            assert_eq!(*(ptrs[2] as *const f32), 0.135);
            assert_eq!(*(ptrs[3] as *const i32), i32::MAX);
        }
    }
}
