//! Loading a plugin library: `dlopen`, the entry point, the version check, the function
//! table (read only as far as its `struct_size` reaches) and the plugin's static facts.
//! Every failure is a reason string, never a crash; `lib.rs` turns it into
//! `Error::Unavailable`.

use crate::error::{cstr, take_error, Context};
use crate::ffi::{self, SizedStruct};
use libloading::Library;
use moemla_core::{Error, Verification, VerificationKind};
use std::path::{Path, PathBuf};

/// The table's functions, each one present (ABI 1.0 requires all of them).
pub(crate) struct Fns {
    pub error_get: unsafe extern "C" fn(*const ffi::MoemlaError, *mut ffi::MoemlaErrorInfo),
    pub error_free: unsafe extern "C" fn(*mut ffi::MoemlaError),
    pub plugin_info: ffi::Call<ffi::MoemlaPluginInfoArgs>,
    pub device_open: ffi::Call<ffi::MoemlaDeviceOpenArgs>,
    pub device_close: ffi::Release<ffi::MoemlaDeviceCloseArgs>,
    pub device_info: ffi::Call<ffi::MoemlaDeviceInfoArgs>,
    pub buffer_alloc: ffi::Call<ffi::MoemlaBufferAllocArgs>,
    pub buffer_from_host: ffi::Call<ffi::MoemlaBufferFromHostArgs>,
    pub buffer_to_host: ffi::Call<ffi::MoemlaBufferToHostArgs>,
    pub buffer_free: ffi::Release<ffi::MoemlaBufferFreeArgs>,
    pub synchronize: ffi::Call<ffi::MoemlaSynchronizeArgs>,
    pub moe_route: ffi::Call<ffi::MoemlaMoeRouteArgs>,
    pub moe_experts: ffi::Call<ffi::MoemlaMoeExpertsArgs>,
    pub mla_decode: ffi::Call<ffi::MoemlaMlaDecodeArgs>,
}

/// A loaded plugin: its functions, what it says about itself, and the library they live
/// in (dropped last, after every device and buffer, which hold the plugin in an `Arc`).
pub(crate) struct Plugin {
    /// The table's functions.
    pub fns: Fns,
    /// The backend name the plugin gave.
    pub name: String,
    /// The vendor it gave.
    pub vendor: String,
    /// Its claimed verification, marked as its own claim.
    pub claimed: Verification,
    /// The library file.
    pub path: PathBuf,
    /// The plugin's ABI version (major, minor).
    pub version: (u32, u32),
    /// Keeps the code behind `fns` mapped. Declared last: dropped after everything above.
    _library: Library,
}

impl Plugin {
    /// Loads the plugin at `path`; `Err` says why it cannot be used.
    pub fn load(path: &Path) -> Result<Plugin, String> {
        let shown = path.display();
        // SAFETY: loading a library runs its initialisers; loading a plugin the user named
        // (`--plugin`, MOEMLA_PLUGIN_PATH) is exactly what was asked for.
        let library = unsafe { Library::new(path) }
            .map_err(|e| format!("cannot load {shown}: {}", describe(&e)))?;
        // SAFETY: the symbol is declared by include/moemla_plugin.h with this signature;
        // the pointer is copied out and used only while `library` is alive (it moves
        // into the Plugin with the functions).
        let get_api: ffi::GetApiFn = unsafe { library.get::<ffi::GetApiFn>(ffi::ENTRY_POINT) }
            .map(|symbol| *symbol)
            .map_err(|e| {
                format!(
                    "{shown} is not a moemla plugin: it does not export `{}` ({})",
                    ffi::ENTRY_POINT,
                    describe(&e)
                )
            })?;
        // SAFETY: the entry point takes nothing and returns a pointer (the header's rule).
        let table = unsafe { get_api() };
        if table.is_null() {
            return Err(format!("{shown}: `{}` returned NULL", ffi::ENTRY_POINT));
        }
        // SAFETY: a non-null table holds at least its frozen head (struct_size and the
        // two version numbers), whatever its major version.
        let head = unsafe { std::ptr::read(table.cast::<[u8; ffi::API_HEAD_SIZE]>()) };
        let (size, major, minor) = parse_head(&head);
        if size < ffi::API_HEAD_SIZE {
            return Err(format!(
                "{shown}: the function table's struct_size is {size}, smaller than its \
                 version fields ({} bytes)",
                ffi::API_HEAD_SIZE
            ));
        }
        if major != ffi::ABI_MAJOR {
            return Err(format!(
                "{shown}: plugin ABI {major}.{minor} is incompatible with this moemla \
                 (plugin ABI {}.{}): the major versions differ; rebuild the plugin against \
                 this moemla's include/moemla_plugin.h",
                ffi::ABI_MAJOR,
                ffi::ABI_MINOR
            ));
        }
        let mut api = ffi::MoemlaPluginApi::zeroed();
        let known = size.min(std::mem::size_of::<ffi::MoemlaPluginApi>());
        // SAFETY: the plugin's table holds `size` bytes (the header's rule); `known` is at
        // most that and at most our table's size. Bytes past a smaller table stay zero,
        // which reads as absent (None) function pointers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                table.cast::<u8>(),
                (&mut api as *mut ffi::MoemlaPluginApi).cast::<u8>(),
                known,
            )
        };
        let fns = Fns::from_table(&api).map_err(|missing| {
            format!(
                "{shown}: the function table (ABI {major}.{minor}, struct_size {size}) lacks \
                 `{missing}`, which ABI {}.0 requires",
                ffi::ABI_MAJOR
            )
        })?;
        let mut plugin = Plugin {
            fns,
            name: String::new(),
            vendor: String::new(),
            claimed: Verification {
                kind: VerificationKind::Unverified,
                detail: String::new(),
            },
            path: path.to_path_buf(),
            version: (major, minor),
            _library: library,
        };
        plugin.read_info()?;
        Ok(plugin)
    }

    /// Calls `plugin_info` and fills name, vendor and claimed verification.
    fn read_info(&mut self) -> Result<(), String> {
        let shown = self.path.display().to_string();
        let mut args = ffi::MoemlaPluginInfoArgs::zeroed();
        // SAFETY: `args` is a zeroed ABI 1.0 struct with struct_size set; the plugin
        // writes its outputs into it during the call.
        let err = unsafe { (self.fns.plugin_info)(&mut args) };
        if !err.is_null() {
            // SAFETY: a non-null return is an error object of this plugin, freed once here.
            let e = unsafe { take_error(self, err, &Context::call(&shown, "plugin_info")) };
            return Err(format!("{shown}: plugin_info failed: {e}"));
        }
        // SAFETY: the strings plugin_info hands out live as long as the library.
        let (name, vendor, detail) = unsafe {
            (
                cstr(args.name),
                cstr(args.vendor),
                cstr(args.verification_detail),
            )
        };
        let name = name.unwrap_or_default();
        if !valid_name(&name) {
            return Err(format!(
                "{shown}: plugin_info gave the name {name:?}; a backend name is 1 to 64 \
                 characters from [A-Za-z0-9_.-]"
            ));
        }
        self.name = name;
        self.vendor = vendor.unwrap_or_default();
        self.claimed = claimed(args.verification_kind, detail, &self.path);
        Ok(())
    }
}

impl Fns {
    /// The functions of a table, or the name of the first one missing.
    fn from_table(t: &ffi::MoemlaPluginApi) -> Result<Fns, &'static str> {
        Ok(Fns {
            error_get: t.error_get.ok_or("error_get")?,
            error_free: t.error_free.ok_or("error_free")?,
            plugin_info: t.plugin_info.ok_or("plugin_info")?,
            device_open: t.device_open.ok_or("device_open")?,
            device_close: t.device_close.ok_or("device_close")?,
            device_info: t.device_info.ok_or("device_info")?,
            buffer_alloc: t.buffer_alloc.ok_or("buffer_alloc")?,
            buffer_from_host: t.buffer_from_host.ok_or("buffer_from_host")?,
            buffer_to_host: t.buffer_to_host.ok_or("buffer_to_host")?,
            buffer_free: t.buffer_free.ok_or("buffer_free")?,
            synchronize: t.synchronize.ok_or("synchronize")?,
            moe_route: t.moe_route.ok_or("moe_route")?,
            moe_experts: t.moe_experts.ok_or("moe_experts")?,
            mla_decode: t.mla_decode.ok_or("mla_decode")?,
        })
    }
}

/// (struct_size, major, minor) from the table's frozen head, in native byte order.
fn parse_head(head: &[u8; ffi::API_HEAD_SIZE]) -> (usize, u32, u32) {
    let word = std::mem::size_of::<usize>();
    let size = usize::from_ne_bytes(head[..word].try_into().expect("usize bytes"));
    let major_at = std::mem::offset_of!(ffi::MoemlaPluginApi, abi_version_major);
    let minor_at = std::mem::offset_of!(ffi::MoemlaPluginApi, abi_version_minor);
    let u32_at = |at: usize| u32::from_ne_bytes(head[at..at + 4].try_into().expect("u32"));
    (size, u32_at(major_at), u32_at(minor_at))
}

/// A libloading error with the `dlerror` text it carries (its `Display` alone says only
/// "dlopen failed").
fn describe(e: &libloading::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether `name` is a usable backend name: 1 to 64 characters from [A-Za-z0-9_.-].
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The plugin's claimed verification: kind [`VerificationKind::Plugin`] (moemla has not
/// checked it), the detail marked as the plugin's own claim with the kind it claims and
/// its own text ("claimed by plugin libacme.so, not checked by moemla: silicon; MI300X").
fn claimed(kind: i32, detail: Option<String>, path: &Path) -> Verification {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let claims = match kind {
        ffi::VERIFICATION_SILICON => VerificationKind::Silicon,
        ffi::VERIFICATION_EMULATOR => VerificationKind::Emulator,
        ffi::VERIFICATION_COMPILE_ONLY => VerificationKind::CompileOnly,
        ffi::VERIFICATION_UNVERIFIED => VerificationKind::Unverified,
        other => {
            return Verification {
                kind: VerificationKind::Plugin,
                detail: with_detail(
                    format!(
                        "claimed by plugin {file}, not checked by moemla: unknown verification \
                         kind {other}"
                    ),
                    detail,
                ),
            }
        }
    };
    // The claimed kind as `Verification`'s Display names it ("silicon", "emulated", ...).
    let claims = Verification {
        kind: claims,
        detail: String::new(),
    };
    Verification {
        kind: VerificationKind::Plugin,
        detail: with_detail(
            format!("claimed by plugin {file}, not checked by moemla: {claims}"),
            detail,
        ),
    }
}

/// `text`, then "; " and the plugin's `detail` if it has one.
fn with_detail(mut text: String, detail: Option<String>) -> String {
    if let Some(detail) = detail.filter(|d| !d.is_empty()) {
        text.push_str("; ");
        text.push_str(&detail);
    }
    text
}

/// The name a plugin that cannot be loaded is listed under: its file name without a
/// `lib` prefix and without extensions (`/opt/acme/libacme_npu.so.1` -> `acme_npu`),
/// other characters than [A-Za-z0-9_.-] replaced by `_`.
pub(crate) fn name_from_file(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file.split('.').next().unwrap_or_default();
    let stem = stem
        .strip_prefix("lib")
        .filter(|s| !s.is_empty())
        .unwrap_or(stem);
    let name: String = stem
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "plugin".to_string()
    } else {
        name
    }
}

/// `Error::Unavailable` for a plugin that cannot be used.
pub(crate) fn unavailable(name: &str, reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: name.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files_drop_lib_and_extensions() {
        assert_eq!(
            name_from_file(Path::new("/opt/acme/libacme_npu.so.1")),
            "acme_npu"
        );
        assert_eq!(name_from_file(Path::new("plugin.dylib")), "plugin");
        assert_eq!(name_from_file(Path::new("lib.so")), "lib");
        assert_eq!(name_from_file(Path::new("my plugin!.so")), "my_plugin_");
        assert_eq!(name_from_file(Path::new("/")), "plugin");
    }

    #[test]
    fn backend_names_are_checked() {
        assert!(valid_name("example_c"));
        assert!(valid_name("acme-npu.v2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(65)));
    }

    #[test]
    fn claims_are_marked_as_the_plugins_own() {
        let v = claimed(
            1,
            Some("MI300X, 2025-01-01".into()),
            Path::new("/x/libacme.so"),
        );
        assert_eq!(v.kind, VerificationKind::Plugin);
        assert_eq!(
            v.detail,
            "claimed by plugin libacme.so, not checked by moemla: silicon; MI300X, 2025-01-01"
        );
        let v = claimed(0, None, Path::new("libacme.so"));
        assert_eq!(v.kind, VerificationKind::Plugin);
        assert_eq!(
            v.detail,
            "claimed by plugin libacme.so, not checked by moemla: unverified"
        );
        let v = claimed(42, None, Path::new("libacme.so"));
        assert_eq!(v.kind, VerificationKind::Plugin);
        assert_eq!(
            v.detail,
            "claimed by plugin libacme.so, not checked by moemla: unknown verification kind 42"
        );
    }
}
