//! The shared op suite (`moemla-testsuite`) on the OpenCL backend. Without an OpenCL
//! platform every test prints `skipped: <reason>` and passes; `MOEMLA_REQUIRE=opencl`
//! makes them fail instead (CI sets it, with PoCL installed).

use moemla_core::Backend;
use std::sync::Arc;

moemla_testsuite::backend_tests!(
    opencl,
    || moemla_opencl::shared().map(|b| b as Arc<dyn Backend>),
    // PoCL on a CPU is slow; env PROPTEST_CASES still overrides.
    moemla_testsuite::SuiteConfig {
        proptest_cases: 8,
        ..Default::default()
    }
);
