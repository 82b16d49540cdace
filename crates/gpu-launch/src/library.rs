//! Vendor libraries loaded at run time: the declarative symbol table
//! ([`symbol_table!`](crate::symbol_table)) and the search that reports every path tried
//! ([`open_first`]) live in `moemla-dylib`, shared with the Ascend backend, and are
//! re-exported here for the CUDA and HIP loaders.

pub use moemla_dylib::{open_first, open_one, with_sources, Library, Opened, SymbolTable, Tried};
