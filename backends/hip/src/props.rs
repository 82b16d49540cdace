//! What the runtime says about a device: name, `gcnArchName`, compute units, wavefront,
//! limits and memory. `gcnArchName` has no attribute query; it is read from
//! `hipDeviceProp_t`, whose layout differs between ROCm 5 and 6.

use crate::error::{HipError, HipStatus};
use crate::loader::{attr, HipRuntime};
use std::ffi::{c_void, CStr};

/// What the runtime says about the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProps {
    /// `hipDeviceGetName` ("AMD Instinct MI300X", ...).
    pub name: String,
    /// `gcnArchName` with target features ("gfx942:sramecc+:xnack-").
    pub arch: String,
    /// Compute units.
    pub compute_units: i32,
    /// Lanes per wavefront (64 on gfx9 / CDNA / Hygon DCU).
    pub warp_size: i32,
    /// Largest block, in threads.
    pub max_threads_per_block: i32,
    /// LDS bytes a block may use.
    pub max_shared_per_block: i32,
    /// Global memory in bytes.
    pub memory_bytes: u64,
}

impl DeviceProps {
    /// The processor without target features ("gfx942").
    pub fn arch_base(&self) -> &str {
        self.arch.split(':').next().unwrap_or(&self.arch)
    }
}

// hipDeviceProp_t byte offsets of `gcnArchName` (char[256]) on x86-64 Linux:
// - R0000 layout (ROCm 5.x, `hipGetDeviceProperties`): 396 — offsetof() computed by
//   clang-19 from Debian's libamdhip64-dev 5.2.3 hip_runtime_api.h; struct size 792.
// - R0600 layout (ROCm 6.x, `hipGetDevicePropertiesR0600`): 1160 — offsetof() computed
//   from ROCm 6's hip_runtime_api.h hipDeviceProp_tR0600 field list; struct size 1472.
// The runtime writes into a 4 KiB buffer, so a struct grown by a later version still fits.
// If the expected offset holds no gfx target name (a layout we do not know, e.g. a DTK
// variant), the 4-byte-aligned offsets are searched for one (see `find_gcn_arch`).
const ARCH_OFFSET_R0000: usize = 396;
const ARCH_OFFSET_R0600: usize = 1160;
const PROPS_BUFFER_WORDS: usize = 512;
const ARCH_LEN: usize = 256;

/// Reads the properties of device `ordinal`; `check` turns a status into an error with
/// the runtime's message.
pub(crate) fn query(
    hip: &HipRuntime,
    ordinal: i32,
    check: impl Fn(&'static str, HipStatus) -> Result<(), HipError>,
) -> Result<DeviceProps, HipError> {
    let attribute = |attribute: i32| {
        let mut value = 0;
        // SAFETY: valid out-pointer.
        let status = unsafe { (hip.hipDeviceGetAttribute)(&mut value, attribute, ordinal) };
        check("hipDeviceGetAttribute", status).map(|()| value)
    };
    let mut name = [0 as std::ffi::c_char; 256];
    // SAFETY: the buffer holds `len` bytes.
    let status = unsafe { (hip.hipDeviceGetName)(name.as_mut_ptr(), 256, ordinal) };
    check("hipDeviceGetName", status)?;
    name[255] = 0;
    // SAFETY: NUL-terminated within the buffer (the last byte is 0).
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut memory = 0usize;
    // SAFETY: valid out-pointer.
    let status = unsafe { (hip.hipDeviceTotalMem)(&mut memory, ordinal) };
    check("hipDeviceTotalMem", status)?;
    Ok(DeviceProps {
        name,
        arch: arch_name(hip, ordinal, &check)?,
        compute_units: attribute(attr::MULTIPROCESSOR_COUNT)?,
        warp_size: attribute(attr::WARP_SIZE)?,
        max_threads_per_block: attribute(attr::MAX_THREADS_PER_BLOCK)?,
        max_shared_per_block: attribute(attr::MAX_SHARED_MEMORY_PER_BLOCK)?,
        memory_bytes: memory as u64,
    })
}

/// `gcnArchName`, which no attribute query returns: read from hipDeviceProp_t.
fn arch_name(
    hip: &HipRuntime,
    ordinal: i32,
    check: &impl Fn(&'static str, HipStatus) -> Result<(), HipError>,
) -> Result<String, HipError> {
    let (call, get, offset) = match (hip.hipGetDevicePropertiesR0600, hip.hipGetDeviceProperties) {
        (Some(get), _) => ("hipGetDevicePropertiesR0600", get, ARCH_OFFSET_R0600),
        (None, Some(get)) => ("hipGetDeviceProperties", get, ARCH_OFFSET_R0000),
        (None, None) => {
            return Err(HipError::Hip {
                call: "hipGetDeviceProperties",
                status: HipStatus::NOT_FOUND,
                message: "neither hipGetDevicePropertiesR0600 nor hipGetDeviceProperties is \
                          exported"
                    .into(),
            })
        }
    };
    let mut buffer = vec![0u64; PROPS_BUFFER_WORDS];
    // SAFETY: the buffer (4 KiB, 8-byte aligned) is larger than either struct layout.
    let status = unsafe { get(buffer.as_mut_ptr().cast::<c_void>(), ordinal) };
    check(call, status)?;
    let bytes: Vec<u8> = buffer.iter().flat_map(|w| w.to_le_bytes()).collect();
    find_gcn_arch(&bytes, offset).ok_or_else(|| HipError::Hip {
        call,
        status: HipStatus::INVALID_VALUE,
        message: format!(
            "no gfx target name at byte {offset} (nor anywhere else) of hipDeviceProp_t: \
             unknown layout"
        ),
    })
}

/// The NUL-terminated string at `offset` of `props` if it is a gfx target name, else the
/// first such string at any 4-byte-aligned offset (char arrays of hipDeviceProp_t are).
fn find_gcn_arch(props: &[u8], offset: usize) -> Option<String> {
    let at = |start: usize| {
        let field = props.get(start..start.saturating_add(ARCH_LEN).min(props.len()))?;
        let end = field.iter().position(|&b| b == 0)?;
        let name = std::str::from_utf8(&field[..end]).ok()?;
        is_gfx_target(name).then(|| name.to_string())
    };
    at(offset).or_else(|| (0..props.len()).step_by(4).find_map(at))
}

/// `gfx` + processor digits (hex), then any `:feature+` / `:feature-` target features,
/// as in "gfx942:sramecc+:xnack-" (LLVM AMDGPUUsage, "Target ID").
fn is_gfx_target(s: &str) -> bool {
    let mut parts = s.split(':');
    let processor = parts.next().unwrap_or("");
    let digits = processor.strip_prefix("gfx").unwrap_or("");
    let processor_ok = (3..=4).contains(&digits.len())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    processor_ok
        && parts.all(|f| {
            f.len() > 1
                && (f.ends_with('+') || f.ends_with('-'))
                && f[..f.len() - 1].bytes().all(|b| b.is_ascii_lowercase())
        })
}

#[cfg(test)]
mod tests {
    use super::{find_gcn_arch, is_gfx_target};

    #[test]
    fn gfx_target_names_are_recognised_with_their_features() {
        for ok in [
            "gfx942",
            "gfx90a",
            "gfx906",
            "gfx1100",
            "gfx942:sramecc+:xnack-",
        ] {
            assert!(is_gfx_target(ok), "{ok}");
        }
        for bad in [
            "",
            "gfx",
            "gfx9",
            "sm_90",
            "ZZZZ",
            "gfx942:",
            "gfx942:xnack",
            "gfx94g",
        ] {
            assert!(!is_gfx_target(bad), "{bad}");
        }
    }

    #[test]
    fn arch_is_read_at_the_layout_offset_else_found_elsewhere() {
        let mut props = vec![0x5au8; 1472];
        props[..12].copy_from_slice(b"Mock MI300X\0");
        let arch = b"gfx942:sramecc+:xnack-\0";
        props[1160..1160 + arch.len()].copy_from_slice(arch);
        assert_eq!(
            find_gcn_arch(&props, 1160).as_deref(),
            Some("gfx942:sramecc+:xnack-")
        );
        // Wrong expected offset (an unknown layout): found by the aligned search.
        assert_eq!(
            find_gcn_arch(&props, 396).as_deref(),
            Some("gfx942:sramecc+:xnack-")
        );
        // No target name anywhere.
        props[1160..1160 + arch.len()].fill(0x5a);
        assert_eq!(find_gcn_arch(&props, 1160), None);
    }
}
