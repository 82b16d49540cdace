//! Vendor libraries loaded at run time: one declarative symbol table per library
//! ([`symbol_table!`](crate::symbol_table), after IREE's `REQUIRED_PFN_DECL` / `OPTIONAL_PFN_DECL` tables) and a
//! search ([`open_first`]) that reports every path tried and why each failed.
//!
//! A table lists its required and optional C functions once; the macro expands it to a
//! struct of function pointers (which keeps the library open) implementing
//! [`SymbolTable`]. A library missing a required symbol is rejected with the names of all
//! missing ones; a candidate path with a folder that does not exist is reported as
//! "not found" without calling the dynamic loader; a dynamic-loader failure carries
//! `dlerror`'s own text.

pub use libloading::Library;
use std::fmt;
use std::path::Path;

/// A library's symbol table, resolved from an open library (see [`symbol_table!`](crate::symbol_table)).
///
/// # Safety
/// Every symbol a library exports under one of the table's names must have the C
/// signature the table declares for it: [`SymbolTable::resolve`] casts them so.
pub unsafe trait SymbolTable: Sized {
    /// The required symbols, in table order.
    const REQUIRED: &'static [&'static str];
    /// The optional symbols, in table order.
    const OPTIONAL: &'static [&'static str];
    /// Looks every symbol up in `library`; `Err` lists the missing required ones.
    fn resolve(library: Library) -> Result<Self, Vec<&'static str>>;
}

/// Declares a library's symbol table: a struct with one field per C function (`Option`
/// for optional ones) that keeps the library open, and its [`SymbolTable`] impl.
///
/// Writing a table asserts that each listed signature is the library's own (the impl is
/// `unsafe`): put the header it comes from in the struct's doc comment.
#[macro_export]
macro_rules! symbol_table {
    (
        $(#[$meta:meta])*
        pub struct $table:ident;
        required {
            $( fn $req:ident ( $($ra:ident : $rt:ty),* $(,)? ) -> $rret:ty; )*
        }
        optional {
            $( fn $opt:ident ( $($oa:ident : $ot:ty),* $(,)? ) -> $oret:ty; )*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub struct $table {
            $(
                #[doc = concat!("`", stringify!($req), "` (required).")]
                pub $req: unsafe extern "C" fn($($rt),*) -> $rret,
            )*
            $(
                #[doc = concat!("`", stringify!($opt), "` (optional: absent in some versions).")]
                pub $opt: Option<unsafe extern "C" fn($($ot),*) -> $oret>,
            )*
            _library: $crate::library::Library,
        }

        // SAFETY: the table's author vouches that each listed signature is the library's
        // own (see the struct's documentation for the header it comes from).
        unsafe impl $crate::library::SymbolTable for $table {
            const REQUIRED: &'static [&'static str] = &[$(stringify!($req)),*];
            const OPTIONAL: &'static [&'static str] = &[$(stringify!($opt)),*];

            #[allow(non_snake_case)]
            fn resolve(
                library: $crate::library::Library,
            ) -> Result<Self, Vec<&'static str>> {
                let mut missing: Vec<&'static str> = Vec::new();
                $(
                    // SAFETY: the symbol is used with the signature the table declares for
                    // it (the trait's contract); the pointer is copied out and stays valid
                    // because the struct keeps `library` open.
                    let $req = unsafe {
                        library.get::<unsafe extern "C" fn($($rt),*) -> $rret>(
                            concat!(stringify!($req), "\0").as_bytes(),
                        )
                    }
                    .ok()
                    .map(|symbol| *symbol);
                    if $req.is_none() {
                        missing.push(stringify!($req));
                    }
                )*
                $(
                    // SAFETY: as above.
                    let $opt = unsafe {
                        library.get::<unsafe extern "C" fn($($ot),*) -> $oret>(
                            concat!(stringify!($opt), "\0").as_bytes(),
                        )
                    }
                    .ok()
                    .map(|symbol| *symbol);
                )*
                match ($($req,)*) {
                    ($(Some($req),)*) => Ok($table { $($req,)* $($opt,)* _library: library }),
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

    crate::symbol_table! {
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

    crate::symbol_table! {
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
}
