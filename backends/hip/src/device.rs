//! One HIP device: its properties, a stream and the compiled-module cache.

use crate::args::KernelArgs;
use crate::error::{unavailable, HipError, HipStatus};
use crate::flavour::SearchList;
use crate::hiprtc;
use crate::kernels::KernelModule;
use crate::loader::{self, attr, HipFunction, HipModule, HipStream, Libraries};
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::Mutex;

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

/// A loaded module and the kernels looked up in it so far.
struct Module {
    handle: HipModule,
    functions: HashMap<String, HipFunction>,
}

/// The HIP device the backend runs on.
pub(crate) struct Device {
    pub(crate) libs: Libraries,
    pub(crate) ordinal: i32,
    pub(crate) props: DeviceProps,
    stream: HipStream,
    /// Modules by (module name, arch).
    modules: Mutex<HashMap<(&'static str, String), Module>>,
}

// SAFETY: HIP stream, module and function handles are process-wide and usable from any
// thread (the HIP runtime is thread-safe); the cache is behind a Mutex.
unsafe impl Send for Device {}
// SAFETY: as above; all mutation goes through the Mutex or the thread-safe runtime.
unsafe impl Sync for Device {}

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

impl Device {
    /// Loads the libraries of `search` and opens device `ordinal`.
    pub(crate) fn open(search: &SearchList, ordinal: i32) -> moemla_core::Result<Device> {
        let libs = loader::load(search).map_err(unavailable)?;
        let hip = &libs.runtime;
        let mut origin = format!(
            "runtime {} ({}), hipRTC {}",
            libs.runtime_path.display(),
            libs.flavour,
            libs.rtc_path.display()
        );
        if !libs.skipped.is_empty() {
            origin.push_str(&format!("; not used: {}", libs.skipped.join("; ")));
        }
        // SAFETY: plain C calls with valid out-pointers.
        let init = unsafe { (hip.hipInit)(0) };
        let mut count = 0i32;
        // SAFETY: as above.
        let counted = unsafe { (hip.hipGetDeviceCount)(&mut count) };
        if counted != HipStatus::SUCCESS || count <= 0 {
            return Err(unavailable(format!(
                "no HIP device: hipInit(0) returned {init}, hipGetDeviceCount returned {counted} \
                 with {count} devices ({origin})"
            )));
        }
        if ordinal >= count {
            return Err(unavailable(format!(
                "HIP device {ordinal} requested, {count} present ({origin})"
            )));
        }
        let mut device = Device {
            libs,
            ordinal,
            props: DeviceProps {
                name: String::new(),
                arch: String::new(),
                compute_units: 0,
                warp_size: 0,
                max_threads_per_block: 0,
                max_shared_per_block: 0,
                memory_bytes: 0,
            },
            stream: std::ptr::null_mut(),
            modules: Mutex::new(HashMap::new()),
        };
        let describe = |e: HipError| unavailable(format!("HIP device {ordinal}: {e} ({origin})"));
        device.props = device.query_props().map_err(describe)?;
        device.select().map_err(describe)?;
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the device is current.
        let status = unsafe { (device.libs.runtime.hipStreamCreate)(&mut stream) };
        device.check("hipStreamCreate", status).map_err(describe)?;
        device.stream = stream;
        Ok(device)
    }

    /// Turns a status into a [`HipError`] carrying the runtime's message.
    pub(crate) fn check(&self, call: &'static str, status: HipStatus) -> Result<(), HipError> {
        if status == HipStatus::SUCCESS {
            return Ok(());
        }
        // SAFETY: hipGetErrorString accepts any status and returns a static C string.
        let text = unsafe { (self.libs.runtime.hipGetErrorString)(status) };
        let message = if text.is_null() {
            status.to_string()
        } else {
            // SAFETY: non-null, NUL-terminated, static storage.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        Err(HipError::Hip {
            call,
            status,
            message,
        })
    }

    /// Makes this device current on the calling thread (HIP's current device is per thread).
    pub(crate) fn select(&self) -> Result<(), HipError> {
        // SAFETY: plain C call.
        let status = unsafe { (self.libs.runtime.hipSetDevice)(self.ordinal) };
        self.check("hipSetDevice", status)
    }

    fn attribute(&self, attribute: i32) -> Result<i32, HipError> {
        let mut value = 0;
        // SAFETY: valid out-pointer.
        let status = unsafe {
            (self.libs.runtime.hipDeviceGetAttribute)(&mut value, attribute, self.ordinal)
        };
        self.check("hipDeviceGetAttribute", status)?;
        Ok(value)
    }

    fn query_props(&self) -> Result<DeviceProps, HipError> {
        let hip = &self.libs.runtime;
        let mut name = [0 as std::ffi::c_char; 256];
        // SAFETY: the buffer holds `len` bytes.
        let status = unsafe { (hip.hipDeviceGetName)(name.as_mut_ptr(), 256, self.ordinal) };
        self.check("hipDeviceGetName", status)?;
        // SAFETY: hipDeviceGetName NUL-terminates within len; the last byte stays 0 anyway.
        name[255] = 0;
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut memory = 0usize;
        // SAFETY: valid out-pointer.
        let status = unsafe { (hip.hipDeviceTotalMem)(&mut memory, self.ordinal) };
        self.check("hipDeviceTotalMem", status)?;
        Ok(DeviceProps {
            name,
            arch: self.arch_name()?,
            compute_units: self.attribute(attr::MULTIPROCESSOR_COUNT)?,
            warp_size: self.attribute(attr::WARP_SIZE)?,
            max_threads_per_block: self.attribute(attr::MAX_THREADS_PER_BLOCK)?,
            max_shared_per_block: self.attribute(attr::MAX_SHARED_MEMORY_PER_BLOCK)?,
            memory_bytes: memory as u64,
        })
    }

    /// `gcnArchName`, which no attribute query returns: read from hipDeviceProp_t.
    fn arch_name(&self) -> Result<String, HipError> {
        let hip = &self.libs.runtime;
        let (call, get, offset) =
            match (hip.hipGetDevicePropertiesR0600, hip.hipGetDeviceProperties) {
                (Some(get), _) => ("hipGetDevicePropertiesR0600", get, ARCH_OFFSET_R0600),
                (None, Some(get)) => ("hipGetDeviceProperties", get, ARCH_OFFSET_R0000),
                (None, None) => {
                    return Err(HipError::Hip {
                        call: "hipGetDeviceProperties",
                        status: HipStatus::NOT_FOUND,
                        message: "neither hipGetDevicePropertiesR0600 nor hipGetDeviceProperties \
                              is exported"
                            .into(),
                    })
                }
            };
        let mut buffer = vec![0u64; PROPS_BUFFER_WORDS];
        // SAFETY: the buffer (4 KiB, 8-byte aligned) is larger than either struct layout.
        let status = unsafe { get(buffer.as_mut_ptr().cast::<c_void>(), self.ordinal) };
        self.check(call, status)?;
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

    /// The device's stream.
    pub(crate) fn stream(&self) -> HipStream {
        self.stream
    }

    /// A kernel of `module`, compiling (hipRTC) and loading the module for this device's
    /// arch on first use.
    pub(crate) fn function(
        &self,
        module: &KernelModule,
        kernel: &str,
    ) -> moemla_core::Result<HipFunction> {
        let mut cache = self
            .modules
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let key = (module.name, self.props.arch.clone());
        if !cache.contains_key(&key) {
            let source = module.source();
            let code = hiprtc::compile(&self.libs.rtc, module.name, &source, &self.props.arch)?;
            let mut handle = std::ptr::null_mut();
            // SAFETY: `code` is a complete code object; valid out-pointer.
            let status =
                unsafe { (self.libs.runtime.hipModuleLoadData)(&mut handle, code.as_ptr().cast()) };
            self.check("hipModuleLoadData", status)?;
            cache.insert(
                key.clone(),
                Module {
                    handle,
                    functions: HashMap::new(),
                },
            );
        }
        let entry = cache.get_mut(&key).expect("inserted above");
        if let Some(&f) = entry.functions.get(kernel) {
            return Ok(f);
        }
        let name = CString::new(kernel).map_err(|_| HipError::Hip {
            call: "hipModuleGetFunction",
            status: HipStatus::INVALID_VALUE,
            message: format!("kernel name {kernel:?} contains NUL"),
        })?;
        let mut function = std::ptr::null_mut();
        // SAFETY: valid module handle, NUL-terminated name, valid out-pointer.
        let status = unsafe {
            (self.libs.runtime.hipModuleGetFunction)(&mut function, entry.handle, name.as_ptr())
        };
        self.check("hipModuleGetFunction", status)?;
        entry.functions.insert(kernel.to_string(), function);
        Ok(function)
    }

    /// Launches `function` on the device's stream. `args` holds one pointer per kernel
    /// parameter, each to a value of the parameter's exact type (see [`KernelArgs`]).
    pub(crate) fn launch(
        &self,
        function: HipFunction,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &mut KernelArgs,
    ) -> Result<(), HipError> {
        let mut pointers = args.pointers();
        // SAFETY: `function` came from hipModuleGetFunction; every pointer in `pointers`
        // points into `args`, alive for the call, holding the parameter's value.
        let status = unsafe {
            (self.libs.runtime.hipModuleLaunchKernel)(
                function,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared_bytes,
                self.stream,
                pointers.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        self.check("hipModuleLaunchKernel", status)
    }

    /// Waits for the stream.
    pub(crate) fn synchronize(&self) -> Result<(), HipError> {
        // SAFETY: valid stream.
        let status = unsafe { (self.libs.runtime.hipStreamSynchronize)(self.stream) };
        self.check("hipStreamSynchronize", status)
    }
}

/// The NUL-terminated string at `offset` of `props` if it is a gfx target name, else the
/// first such string at any 4-byte-aligned offset (char arrays of hipDeviceProp_t are).
fn find_gcn_arch(props: &[u8], offset: usize) -> Option<String> {
    let at = |start: usize| {
        let field = props.get(start..(start + ARCH_LEN).min(props.len()))?;
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

impl Drop for Device {
    fn drop(&mut self) {
        let cache = self
            .modules
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        for module in cache.values() {
            // SAFETY: each handle came from hipModuleLoadData and is unloaded once.
            unsafe { (self.libs.runtime.hipModuleUnload)(module.handle) };
        }
        if !self.stream.is_null() {
            // SAFETY: created by hipStreamCreate, destroyed once.
            unsafe { (self.libs.runtime.hipStreamDestroy)(self.stream) };
        }
    }
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
