//! The shared op suite (`moemla-testsuite`) on the Ascend backend, on the CANN C-API
//! emulator unless `MOEMLA_ASCEND_LIB`, `MOEMLA_ASCEND_LIB_DIR` or
//! `MOEMLA_ASCEND_TEST_REAL=1` points elsewhere. CANN's ops cannot do every shape (e.g.
//! mla_decode only Dqk 576 / Dv 512 in F16/BF16): a test that meets `Error::Unsupported`
//! prints `skipped: unsupported: <reason>` and passes.

mod common;

use moemla_ascend::AscendBackend;
use moemla_core::Backend;
use std::sync::Arc;

moemla_testsuite::backend_tests!(
    ascend,
    || {
        common::use_emulator_unless_configured();
        AscendBackend::new().map(|b| Arc::new(b) as Arc<dyn Backend>)
    },
    moemla_testsuite::SuiteConfig {
        allow_unsupported: true,
        ..Default::default()
    }
);
