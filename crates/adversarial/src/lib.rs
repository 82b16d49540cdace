//! Adversarial properties every backend must hold, whatever it is given: each call returns
//! `Ok` with the outputs the contract promises (finite where the inputs make them so), or a
//! typed [`moemla_core::Error`] of the kind the input deserves — never a panic, an abort, a
//! hang or a read out of bounds.
//!
//! The properties are generic over `&dyn Backend`; `tests/backends.rs` runs them against
//! every backend, each in a child process so that an abort cannot take the harness down.

pub mod experts;
pub mod mla;
pub mod route;
pub mod tensors;
pub mod values;

use moemla_core::{Backend, Error};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRng, TestRunner};

/// Fails the current case with `why` unless `ok`.
pub(crate) fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(why()))
    }
}

/// Whether `e` is an error a well-formed call can legitimately get from a backend that
/// cannot do it (capability or resource limits), as opposed to an input error.
pub(crate) fn is_capability_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Unsupported { .. } | Error::OutOfMemory { .. } | Error::Size { .. }
    )
}

/// One property run: its name and how many cases passed.
#[derive(Debug)]
pub struct PropertyReport {
    /// The property's name.
    pub name: &'static str,
    /// Cases generated and checked.
    pub cases: u32,
}

/// Runs `cases` deterministic cases of every property against `backend` and returns one
/// report per property, or the first failure (minimised by proptest) as a message.
pub fn run_all(backend: &dyn Backend, cases: u32) -> Result<Vec<PropertyReport>, String> {
    let properties: [(&'static str, Property); 4] = [
        ("tensors", tensors::property),
        ("moe_route", route::property),
        ("moe_experts", experts::property),
        ("mla_decode", mla::property),
    ];
    properties
        .into_iter()
        .map(|(name, property)| {
            // Progress on stdout: a hung child's log shows which property it was in.
            println!("adversarial: {}: {name}: {cases} cases", backend.name());
            property(backend, runner(cases)).map_err(|e| format!("{name}: {e}"))?;
            Ok(PropertyReport { name, cases })
        })
        .collect()
}

/// A property: runs its strategy through `runner` against a backend.
type Property = fn(&dyn Backend, TestRunner) -> Result<(), String>;

/// A deterministic runner (same cases on every run and machine) of `cases` cases.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[0x6d; 32], // fixed seed: "m" for moemla
        ),
    )
}

/// A proptest failure as one line with the minimal failing input.
pub(crate) fn describe<T: std::fmt::Debug>(e: TestError<T>) -> String {
    match e {
        TestError::Abort(why) => format!("aborted: {why}"),
        TestError::Fail(why, input) => {
            // Inputs can hold 10^5 values: the start of the dump names the shapes and params.
            let mut input = format!("{input:?}");
            if input.len() > 3000 {
                let mut end = 3000;
                while !input.is_char_boundary(end) {
                    end -= 1;
                }
                input.truncate(end);
                input.push_str(" ...");
            }
            format!("{why}\n  minimal failing input: {input}")
        }
    }
}
