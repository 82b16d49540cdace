//! The shared op suite on the CUDA backend. Without a CUDA device every test prints
//! `skipped: <reason>` and passes; `MOEMLA_REQUIRE=cuda` makes them fail instead (what
//! `scripts/device-check.sh run` sets it on a GPU).

use moemla_core::Backend;
use std::sync::Arc;

moemla_testsuite::backend_tests!(cuda, || {
    Ok(Arc::new(moemla_cuda::CudaBackend::new()?) as Arc<dyn Backend>)
});
