//! The shared op test suite (`moemla-testsuite`) on the example C plugin
//! (examples/plugin-c), built with the system C compiler and loaded through the ABI.
//! Without a compiler every test prints `skipped: ...` and passes, unless
//! `MOEMLA_REQUIRE=example_c`.

mod common;

use moemla_core::{Backend, Error, Result};
use std::sync::Arc;

/// Builds the example plugin and opens it through `moemla_plugin::factory_for`.
fn example_plugin() -> Result<Arc<dyn Backend>> {
    let path =
        common::build_example("moemla_example", &[]).map_err(|reason| Error::Unavailable {
            backend: common::EXAMPLE.to_string(),
            reason,
        })?;
    moemla_plugin::factory_for(&path).open()
}

moemla_testsuite::backend_tests!(example_c, example_plugin);
