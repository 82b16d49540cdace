//! Lane masks for AVX-512 masked loads and stores: the first `live` lanes of a vector.

/// The first `live` of 16 lanes (all of them from 16 on).
pub const fn first16(live: usize) -> u16 {
    if live >= 16 {
        u16::MAX
    } else {
        (1u16 << live) - 1
    }
}

/// The first `live` of 32 lanes (all of them from 32 on).
pub const fn first32(live: usize) -> u32 {
    if live >= 32 {
        u32::MAX
    } else {
        (1u32 << live) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_the_first_lanes_only() {
        assert_eq!(first16(0), 0);
        assert_eq!(first16(1), 1);
        assert_eq!(first16(15), 0x7fff);
        assert_eq!((first16(16), first16(40)), (u16::MAX, u16::MAX));
        assert_eq!(first32(0), 0);
        assert_eq!(first32(17), 0x1_ffff);
        assert_eq!((first32(32), first32(33)), (u32::MAX, u32::MAX));
    }
}
