//! The shared op suite on the HIP backend. Without a HIP device every test prints
//! `skipped: <reason>` and passes; `MOEMLA_REQUIRE=hip` makes them fail instead (the
//! command to run on an MI300X or a Hygon DCU).

use moemla_core::Backend;
use std::sync::Arc;

moemla_testsuite::backend_tests!(hip, || {
    Ok(Arc::new(moemla_hip::HipBackend::new()?) as Arc<dyn Backend>)
});
