//! The shared op test suite (`moemla-testsuite`) on the template backend: its `moe_route`
//! passes every routing case; every case of an op it does not implement meets
//! `Error::Unsupported` and is reported as skipped (`allow_unsupported`), never as passed.

moemla_testsuite::backend_tests!(
    template,
    || moemla_template::factory().open(),
    moemla_testsuite::SuiteConfig {
        allow_unsupported: true,
        ..Default::default()
    }
);
