//! Intel AMX tiles (AMX-TILE with AMX-BF16: Sapphire Rapids and later Xeons), where this
//! process may use them: whether it may ([`enabled`]), and the tile configuration every
//! tile kernel loads first ([`TileConfig`]). Facts from Intel's Software Developer's
//! Manual (vol. 1 ch. 18, "Intel Advanced Matrix Extensions"; vol. 2, `LDTILECFG` and
//! `TDPBF16PS`) and the Linux kernel's `Documentation/arch/x86/xstate.rst`.

use std::sync::OnceLock;

/// Environment variable that keeps the tiles off when set to `0` (to measure the kernels
/// that run without them on the same machine).
pub const ENV: &str = "MOEMLA_CPU_AMX";

/// Whether this process may run AMX-BF16 tile instructions: the CPU has AMX-TILE and
/// AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), the OS saves the tile state (XCR0 bits 17
/// and 18), and Linux granted this process the tile data (`arch_prctl
/// ARCH_REQ_XCOMP_PERM`, asked once, process-wide: until then a tile instruction faults).
/// False on other systems and architectures, and where [`ENV`] is `0`.
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var(ENV).map_or(true, |v| v != "0") && imp::supported() && imp::permitted()
    })
}

/// The tiles a kernel uses, as `LDTILECFG` reads them (palette 1: eight tiles of at most
/// 16 rows of 64 bytes). Built only through [`TileConfig::new`], which checks those
/// limits: a configuration outside them makes `LDTILECFG` fault.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Tiles of palette 1.
pub const TILES: usize = 8;
/// Rows of a tile, at most.
pub const MAX_ROWS: usize = 16;
/// Bytes of a tile row, at most.
pub const MAX_ROW_BYTES: usize = 64;

impl TileConfig {
    /// Tile `t` of `shapes[t] = (rows, bytes per row)`; unlisted tiles unused. `None`
    /// for more than [`TILES`] tiles, or a shape past [`MAX_ROWS`] x [`MAX_ROW_BYTES`]
    /// (or with zero rows or bytes).
    pub fn new(shapes: &[(usize, usize)]) -> Option<TileConfig> {
        let mut c = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        if shapes.len() > TILES {
            return None;
        }
        for (t, &(rows, bytes)) in shapes.iter().enumerate() {
            if !(1..=MAX_ROWS).contains(&rows) || !(1..=MAX_ROW_BYTES).contains(&bytes) {
                return None;
            }
            c.rows[t] = rows as u8;
            c.colsb[t] = bytes as u16;
        }
        Some(c)
    }

    /// Loads this configuration on the calling thread (`LDTILECFG`), zeroing every tile.
    ///
    /// # Safety
    /// [`enabled`] must have returned true.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn load(&self) {
        // SAFETY: the caller saw `enabled()`, so the CPU and OS support tiles and this
        // process may use them; `self` is a 64-byte, 64-aligned palette-1 configuration
        // whose shapes `new` checked, so LDTILECFG cannot fault.
        unsafe { std::arch::asm!("ldtilecfg [{0}]", in(reg) self, options(nostack, readonly)) };
    }
}

/// Returns the calling thread's tiles to their initial state (`TILERELEASE`), so the OS
/// need not save them on a context switch.
///
/// # Safety
/// [`enabled`] must have returned true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn release() {
    // SAFETY: the caller saw `enabled()`: the instruction exists and is permitted.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

// The tile instructions, one `asm!` block each. A kernel's tiles live from its
// `TileConfig::load` to its `release`, across several blocks: the tile registers are not
// among those Rust's inline assembly allocates, and no compiled Rust code uses them.

/// `TILEZERO` of tile `T`.
///
/// # Safety
/// A configuration with tile `T` is loaded on this thread.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn zero<const T: usize>() {
    // SAFETY: the caller loaded a configuration; the instruction touches no memory.
    unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
}

/// `TILELOADD` of tile `T` from `p`, its rows `stride` bytes apart.
///
/// # Safety
/// A configuration with tile `T` is loaded on this thread; the tile's rows x bytes at
/// `p` (rows `stride` apart) are readable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn load<const T: usize>(p: *const u8, stride: usize) {
    // SAFETY: the caller vouches for the configuration and the bytes read.
    unsafe {
        std::arch::asm!(
            "tileloadd tmm{t}, [{p} + {s}*1]",
            t = const T,
            p = in(reg) p,
            s = in(reg) stride,
            options(nostack, readonly)
        )
    };
}

/// `TILESTORED` of tile `T` to `p`, its rows `stride` bytes apart.
///
/// # Safety
/// A configuration with tile `T` is loaded on this thread; the tile's rows x bytes at
/// `p` (rows `stride` apart) are writable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn store<const T: usize>(p: *mut u8, stride: usize) {
    // SAFETY: the caller vouches for the configuration and the bytes written.
    unsafe {
        std::arch::asm!(
            "tilestored [{p} + {s}*1], tmm{t}",
            t = const T,
            p = in(reg) p,
            s = in(reg) stride,
            options(nostack)
        )
    };
}

/// `TDPBF16PS`: tile `C` (f32) += tile `A` . tile `B` (bf16 pairs).
///
/// # Safety
/// A configuration with the three tiles is loaded on this thread, their shapes as the
/// instruction requires (`A`: C's rows x 64 bytes at most; `B`: A's bytes / 4 rows x C's
/// bytes).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn dot_bf16<const C: usize, const A: usize, const B: usize>() {
    // SAFETY: the caller vouches for the configuration; no memory is touched.
    unsafe {
        std::arch::asm!(
            "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
            c = const C,
            a = const A,
            b = const B,
            options(nostack, nomem)
        )
    };
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

    /// CPUID.(EAX=7, ECX=0):EDX bits of AMX-BF16 and AMX-TILE.
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    /// CPUID.1:ECX bit of OSXSAVE (XGETBV usable).
    const OSXSAVE: u32 = 1 << 27;
    /// XCR0 bits of the tile configuration (17) and tile data (18) state.
    const XCR0_TILES: u64 = (1 << 17) | (1 << 18);
    /// `arch_prctl` request for an extended state component, and the tile data's number.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    /// Whether the CPU has AMX-TILE and AMX-BF16 and the OS saves their state.
    pub fn supported() -> bool {
        // Leaf 7 is read only when the maximum leaf (leaf 0's EAX) covers it.
        let (max, l1) = (__cpuid(0).eax, __cpuid(1));
        if max < 7 || l1.ecx & OSXSAVE == 0 {
            return false;
        }
        let l7 = __cpuid_count(7, 0);
        let amx = AMX_BF16 | AMX_TILE;
        // SAFETY: OSXSAVE was checked above, so XGETBV exists and the OS enabled it.
        l7.edx & amx == amx && unsafe { xcr0() } & XCR0_TILES == XCR0_TILES
    }

    /// XCR0, the state components the OS saves.
    #[target_feature(enable = "xsave")]
    fn xcr0() -> u64 {
        // SAFETY: the target feature makes XGETBV available in this function.
        unsafe { _xgetbv(0) }
    }

    /// Asks Linux for the tile data state for this process; whether it was granted.
    pub fn permitted() -> bool {
        // SAFETY: a plain system call with integer arguments; a kernel without the request
        // (before 5.16) returns an error, which counts as no permission.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    /// No AMX off x86-64 Linux.
    pub fn supported() -> bool {
        false
    }
    /// Never asked.
    pub fn permitted() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_outside_palette_1_are_refused() {
        assert!(TileConfig::new(&[(16, 64); 8]).is_some());
        assert!(TileConfig::new(&[(16, 64); 9]).is_none());
        for bad in [(17, 64), (16, 65), (0, 64), (16, 0)] {
            assert!(TileConfig::new(&[(16, 64), bad]).is_none(), "{bad:?}");
        }
        let c = TileConfig::new(&[(3, 64), (16, 12)]).unwrap();
        assert_eq!(
            (c.palette, c.rows[..3].to_vec(), c.colsb[..3].to_vec()),
            (1, vec![3, 16, 0], vec![64, 12, 0])
        );
        assert_eq!(std::mem::size_of::<TileConfig>(), 64);
    }

    #[test]
    fn enabled_only_where_the_cpu_reports_tiles() {
        // Where tiles are enabled, a configuration loads and a tile round-trips.
        #[cfg(target_arch = "x86_64")]
        if enabled() {
            let c = TileConfig::new(&[(2, 8)]).unwrap();
            let src = [1u32, 2, 3, 4];
            let mut dst = [0u32; 4];
            // SAFETY: enabled; tile 0 is 2 rows of 8 bytes, loaded from and stored to
            // 16-byte buffers with a stride of 8 bytes.
            unsafe {
                c.load();
                load::<0>(src.as_ptr().cast(), 8);
                store::<0>(dst.as_mut_ptr().cast(), 8);
                release();
            }
            assert_eq!(dst, src);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert!(!enabled());
    }
}
