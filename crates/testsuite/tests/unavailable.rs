//! An instantiation whose factory reports `Unavailable`: every test prints `skipped:` and
//! passes (this binary must not be run with MOEMLA_REQUIRE naming `absent`).

use moemla_core::Error;

moemla_testsuite::backend_tests!(absent, || Err(Error::Unavailable {
    backend: "absent".into(),
    reason: "no such device (suite self-test)".into(),
}));
