//! Kernel arguments as `cuLaunchKernel` and `hipModuleLaunchKernel` take them.

use std::ffi::c_void;

/// One kernel parameter: a device pointer, an `int` or a `float` (kernels/README.md: every
/// parameter is one of these).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address (8 bytes).
    Ptr(u64),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
}

/// The parameters of one launch in the launch APIs' form: one 8-byte slot per parameter
/// holding its value in the low bytes (little-endian), and an array of pointers to the
/// slots (`kernelParams`). Keep it alive until the launch call returns.
pub struct ArgSlots {
    slots: Vec<u64>,
}

impl ArgSlots {
    /// Packs `args` in order.
    pub fn new(args: &[Arg]) -> ArgSlots {
        let slots = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => u64::from(v as u32),
                Arg::F32(v) => u64::from(v.to_bits()),
            })
            .collect();
        ArgSlots { slots }
    }

    /// One pointer per parameter, each to its slot (valid while `self` is).
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| (s as *mut u64).cast())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Arg, ArgSlots};

    #[test]
    fn each_pointer_addresses_its_value_in_its_c_type() {
        let mut slots = ArgSlots::new(&[
            Arg::Ptr(0x1234_5678_9abc_def0),
            Arg::I32(-7),
            Arg::F32(0.135),
            Arg::I32(i32::MAX),
        ]);
        let ptrs = slots.pointers();
        assert_eq!(ptrs.len(), 4);
        // SAFETY: each pointer addresses an 8-byte slot of `slots`, alive here; a kernel
        // reads as many bytes as its parameter's type has, from the slot's start.
        unsafe {
            assert_eq!(*(ptrs[0] as *const u64), 0x1234_5678_9abc_def0);
            assert_eq!(*(ptrs[1] as *const i32), -7);
            assert_eq!(*(ptrs[2] as *const f32), 0.135);
            assert_eq!(*(ptrs[3] as *const i32), i32::MAX);
        }
    }
}
