//! The shared op test suite (`moemla-testsuite`) on the CPU backend.

moemla_testsuite::backend_tests!(cpu, || Ok(std::sync::Arc::new(
    moemla_cpu::CpuBackend::new()
)));
