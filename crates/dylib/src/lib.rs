//! # moemla-dylib
//!
//! Vendor libraries loaded at run time, written once for every backend that loads one
//! (CUDA and HIP through `moemla-gpu-launch`, Ascend directly): declarative symbol tables
//! ([`symbol_table!`], after IREE's `REQUIRED_PFN_DECL` / `OPTIONAL_PFN_DECL` tables) and
//! a search ([`open_first`]) that reports every path tried and why each failed.
//!
//! A table lists its required and optional C functions once; the macro expands it to a
//! struct of function pointers (which keeps its libraries open) implementing
//! [`SymbolTable`]. A table resolves from one library ([`SymbolTable::resolve`]) or from
//! several, each symbol from the first that has it ([`SymbolTable::resolve_in`]: a vendor
//! that splits its API over several files). A library missing a required symbol is
//! rejected with the names of all missing ones; a candidate path with a folder that does
//! not exist is reported as "not found" without calling the dynamic loader; a
//! dynamic-loader failure carries `dlerror`'s own text ([`with_sources`]).

pub use libloading::Library;
use std::ffi::c_void;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A library's symbol table, resolved from open libraries (see [`symbol_table!`]).
///
/// # Safety
/// Every symbol a library exports under one of the table's names must have the C
/// signature the table declares for it: [`SymbolTable::resolve_in`] casts them so.
pub unsafe trait SymbolTable: Sized {
    /// The required symbols, in table order.
    const REQUIRED: &'static [&'static str];
    /// The optional symbols, in table order.
    const OPTIONAL: &'static [&'static str];

    /// Looks every symbol up in `libraries`, each in the first that has it (the table
    /// keeps them all open); `Err` lists the missing required ones.
    fn resolve_in(libraries: &[Arc<Library>]) -> Result<Self, Vec<&'static str>>;

    /// Looks every symbol up in `library`; `Err` lists the missing required ones.
    fn resolve(library: Library) -> Result<Self, Vec<&'static str>> {
        Self::resolve_in(&[Arc::new(library)])
    }
}

/// The first non-null address of the symbol `name` (NUL-terminated) in `libraries`, as the
/// function-pointer type `F`. Used by [`symbol_table!`].
///
/// # Safety
/// `F` is a function-pointer type with the C signature the libraries define for `name`.
#[doc(hidden)]
pub unsafe fn lookup<F: Copy>(libraries: &[Arc<Library>], name: &[u8]) -> Option<F> {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    libraries.iter().find_map(|library| {
        // SAFETY: only the address is read here, as a plain pointer.
        let symbol = unsafe { library.get::<*mut c_void>(name) }.ok()?;
        let address: *mut c_void = *symbol;
        // SAFETY: a non-null address of a function with `F`'s signature (this function's
        // contract), and `F` is pointer-sized (checked above).
        (!address.is_null())
            .then(|| unsafe { std::mem::transmute_copy::<*mut c_void, F>(&address) })
    })
}

/// Declares a library's symbol table: a struct with one field per C function (`Option`
/// for optional ones) that keeps its libraries open, and its [`SymbolTable`] impl.
///
/// Writing a table asserts that each listed signature is the library's own (the impl is
/// `unsafe`): put the header it comes from in the struct's doc comment, or an entry's.
/// Argument names are for the reader only (`_` is allowed).
///
/// ```
/// moemla_dylib::symbol_table! {
///     /// A few of libm's functions (C99 `<math.h>`).
///     pub struct LibM;
///     required {
///         /// `double cos(double x)`
///         fn cos(x: f64) -> f64;
///     }
///     optional {
///         fn exp10(_: f64) -> f64;
///     }
/// }
/// let m = moemla_dylib::open_first::<LibM, _>(["libm.so.6"]).unwrap().table;
/// // SAFETY: libm's cos with its C signature.
/// assert_eq!(unsafe { (m.cos)(0.0) }, 1.0);
/// ```
#[macro_export]
macro_rules! symbol_table {
    (
        $(#[$meta:meta])*
        pub struct $table:ident;
        required {
            $( $(#[$rm:meta])* fn $req:ident ( $($ra:tt : $rt:ty),* $(,)? ) -> $rret:ty; )*
        }
        optional {
            $( $(#[$om:meta])* fn $opt:ident ( $($oa:tt : $ot:ty),* $(,)? ) -> $oret:ty; )*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub struct $table {
            $(
                $(#[$rm])*
                #[doc = concat!("`", stringify!($req), "` (required).")]
                pub $req: unsafe extern "C" fn($($rt),*) -> $rret,
            )*
            $(
                $(#[$om])*
                #[doc = concat!("`", stringify!($opt), "` (optional: absent in some versions).")]
                pub $opt: Option<unsafe extern "C" fn($($ot),*) -> $oret>,
            )*
            _libraries: Vec<::std::sync::Arc<$crate::Library>>,
        }

        // SAFETY: the table's author vouches that each listed signature is the library's
        // own (see the struct's documentation for the header it comes from).
        unsafe impl $crate::SymbolTable for $table {
            const REQUIRED: &'static [&'static str] = &[$(stringify!($req)),*];
            const OPTIONAL: &'static [&'static str] = &[$(stringify!($opt)),*];

            #[allow(non_snake_case)]
            fn resolve_in(
                libraries: &[::std::sync::Arc<$crate::Library>],
            ) -> Result<Self, Vec<&'static str>> {
                let mut missing: Vec<&'static str> = Vec::new();
                $(
                    // SAFETY: the symbol is used with the signature the table declares for
                    // it (the trait's contract); the pointer stays valid because the
                    // struct keeps `libraries` open.
                    let $req = unsafe {
                        $crate::lookup::<unsafe extern "C" fn($($rt),*) -> $rret>(
                            libraries,
                            concat!(stringify!($req), "\0").as_bytes(),
                        )
                    };
                    if $req.is_none() {
                        missing.push(stringify!($req));
                    }
                )*
                $(
                    // SAFETY: as above.
                    let $opt = unsafe {
                        $crate::lookup::<unsafe extern "C" fn($($ot),*) -> $oret>(
                            libraries,
                            concat!(stringify!($opt), "\0").as_bytes(),
                        )
                    };
                )*
                match ($($req,)*) {
                    ($(Some($req),)*) => Ok($table {
                        $($req,)*
                        $($opt,)*
                        _libraries: libraries.to_vec(),
                    }),
                    _ => Err(missing),
                }
            }
        }
    };
}

/// Every candidate tried, each as `"<path> (<why it failed>)"`, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tried(pub Vec<String>);

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(no candidates)");
        }
        f.write_str(&self.0.join("; "))
    }
}

/// A library opened by [`open_first`].
pub struct Opened<T, C> {
    /// Its symbol table.
    pub table: T,
    /// The candidate it was found as.
    pub candidate: C,
    /// The candidates tried before it, with why each failed.
    pub skipped: Tried,
}

/// Opens the first of `candidates` that loads and carries every required symbol of `T`;
/// returns it with its candidate and the ones skipped, or every candidate tried with why
/// it failed.
pub fn open_first<T: SymbolTable, C: AsRef<Path>>(
    candidates: impl IntoIterator<Item = C>,
) -> Result<Opened<T, C>, Tried> {
    let mut tried = Vec::new();
    for candidate in candidates {
        match open_one::<T>(candidate.as_ref()) {
            Ok(table) => {
                return Ok(Opened {
                    table,
                    candidate,
                    skipped: Tried(tried),
                })
            }
            Err(why) => tried.push(format!("{} ({why})", candidate.as_ref().display())),
        }
    }
    Err(Tried(tried))
}

/// Opens one library and resolves `T` from it.
pub fn open_one<T: SymbolTable>(path: &Path) -> Result<T, String> {
    let has_folder = path.parent().is_some_and(|p| !p.as_os_str().is_empty());
    if has_folder && !path.exists() {
        return Err("not found".into());
    }
    // SAFETY: loading a shared library runs its initialisers; the candidates are vendor
    // libraries named by the user or installed under the vendor's standard folders.
    let library = unsafe { Library::new(path) }.map_err(|e| with_sources(&e))?;
    T::resolve(library).map_err(|missing| {
        let s = if missing.len() == 1 { "" } else { "s" };
        format!("missing required symbol{s} {}", missing.join(", "))
    })
}

/// `e` followed by its chain of sources: libloading's `DlOpen` error displays only
/// "dlopen failed", and dlerror's own text (no such file, wrong ELF class, a missing
/// dependency) is its source.
pub fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_double;

    symbol_table! {
        /// A few of libm's functions (C99 <math.h>).
        pub struct LibM;
        required {
            fn cos(x: c_double) -> c_double;
            fn sqrt(x: c_double) -> c_double;
        }
        optional {
            fn moemla_no_such_function(x: c_double) -> c_double;
        }
    }

    symbol_table! {
        /// Symbols no library has (never resolved: only the failure is looked at).
        #[allow(dead_code)]
        pub struct Nowhere;
        required {
            fn moemla_missing_a() -> i32;
            fn cos(x: c_double) -> c_double;
            fn moemla_missing_b() -> i32;
        }
        optional {}
    }

    #[test]
    fn a_table_resolves_required_and_optional_symbols() {
        let Ok(opened) = open_first::<LibM, _>(["/nonexistent/libm.so.6", "libm.so.6"]) else {
            panic!("libm.so.6 loads");
        };
        assert_eq!(opened.candidate, "libm.so.6");
        assert_eq!(opened.skipped.0, ["/nonexistent/libm.so.6 (not found)"]);
        let m = opened.table;
        // SAFETY: libm's cos and sqrt with their C signatures.
        unsafe {
            assert_eq!((m.cos)(0.0), 1.0);
            assert_eq!((m.sqrt)(6.25), 2.5);
        }
        assert!(m.moemla_no_such_function.is_none());
        assert_eq!(LibM::REQUIRED, ["cos", "sqrt"]);
        assert_eq!(LibM::OPTIONAL, ["moemla_no_such_function"]);
    }

    #[test]
    fn every_path_tried_is_reported_with_why_it_failed() {
        let Err(tried) = open_first::<Nowhere, _>([
            "/nonexistent/moemla/libx.so",
            "libmoemla-no-such-library.so.3",
            "libm.so.6",
        ]) else {
            panic!("libm has none of these");
        };
        assert_eq!(tried.0.len(), 3);
        assert_eq!(tried.0[0], "/nonexistent/moemla/libx.so (not found)");
        // dlerror's own text, not just "dlopen failed".
        assert!(
            tried.0[1].starts_with("libmoemla-no-such-library.so.3 (dlopen failed: ")
                && tried.0[1].contains("cannot open shared object file"),
            "{}",
            tried.0[1]
        );
        assert_eq!(
            tried.0[2],
            "libm.so.6 (missing required symbols moemla_missing_a, moemla_missing_b)"
        );
        assert!(tried.to_string().contains("(not found); libmoemla-no-such"));
    }

    symbol_table! {
        /// One function of libm and one of libc (C99 `<math.h>`, `<string.h>`).
        pub struct Split;
        required {
            fn cos(x: c_double) -> c_double;
            fn strlen(_: *const std::ffi::c_char) -> usize;
        }
        optional {}
    }

    #[test]
    fn a_table_resolves_each_symbol_from_the_first_library_that_has_it() {
        // SAFETY: the C library and libm, whose initialisers are the process's own.
        let open = |name: &str| Arc::new(unsafe { Library::new(name) }.unwrap());
        let (libc, libm) = (open("libc.so.6"), open("libm.so.6"));
        let Err(missing) = Split::resolve_in(std::slice::from_ref(&libc)) else {
            panic!("libc has no cos");
        };
        assert_eq!(missing, ["cos"]);
        let Ok(split) = Split::resolve_in(&[libc, libm]) else {
            panic!("cos from libm, strlen from libc");
        };
        // SAFETY: libm's cos and libc's strlen with their C signatures, on a C string.
        unsafe {
            assert_eq!((split.cos)(0.0), 1.0);
            assert_eq!((split.strlen)(c"moemla".as_ptr()), 6);
        }
    }
}
