//! The CPU's vendor, for the few kernel choices that measured differently on Intel and AMD
//! cores with the same instruction sets.

/// Whether the CPU's vendor string (CPUID leaf 0) is Intel's; read once per process
/// (CPUID serialises the core, and in a VM traps to the hypervisor).
pub fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static INTEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *INTEL.get_or_init(|| {
            // SAFETY: every x86_64 CPU has CPUID with leaf 0. (A safe function in recent
            // Rust, unsafe in older releases: the block keeps the minimum version building.)
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            let words = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes);
            words.concat() == b"GenuineIntel"
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
