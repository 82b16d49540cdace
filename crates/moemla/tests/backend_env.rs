//! `MOEMLA_BACKEND` exactly as README.md documents it, through the real variable. One test:
//! the variable is process-wide.
#![cfg(feature = "cpu")]

use moemla::core::{Backend, BackendFactory, Error, Verification, VerificationKind};
use moemla::{compiled_in, select, Registry, BACKEND_ENV};
use std::sync::Arc;

fn unavailable(result: Result<Arc<dyn Backend>, Error>) -> (String, String) {
    match result {
        Err(Error::Unavailable { backend, reason }) => (backend, reason),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(b) => panic!("expected Unavailable, got backend {}", b.name()),
    }
}

#[test]
fn moemla_backend_names_the_backend_ignoring_case_and_an_unavailable_one_is_an_error() {
    assert_eq!(BACKEND_ENV, "MOEMLA_BACKEND");

    // Names ignore case.
    std::env::set_var(BACKEND_ENV, "CPU");
    assert_eq!(select(None).unwrap().name(), "cpu");

    // A name this build does not have: an error listing the ones it has.
    std::env::set_var(BACKEND_ENV, "no-such-backend");
    let (backend, reason) = unavailable(select(None));
    assert_eq!(backend, "no-such-backend");
    assert!(reason.contains("cpu"), "{reason}");
    assert!(reason.contains("named by MOEMLA_BACKEND"), "{reason}");
    // An explicit name wins over the variable.
    assert_eq!(select(Some("cpu")).unwrap().name(), "cpu");

    // A backend of this build that cannot run here: its own reason, never the CPU instead.
    let acme = BackendFactory::new(
        "acme",
        Verification {
            kind: VerificationKind::Unverified,
            detail: "test".into(),
        },
        || {
            Err(Error::Unavailable {
                backend: "acme".into(),
                reason: "no Acme card in this machine".into(),
            })
        },
    );
    let cpu = compiled_in().into_iter().filter(|f| f.name() == "cpu");
    let registry = Registry::new(std::iter::once(acme).chain(cpu).collect());
    std::env::set_var(BACKEND_ENV, "acme");
    let (backend, reason) = unavailable(registry.select(None));
    assert_eq!(backend, "acme");
    assert!(
        reason.starts_with("no Acme card in this machine (named by MOEMLA_BACKEND"),
        "{reason}"
    );

    // Unset (or empty): the best available backend, here the CPU.
    std::env::set_var(BACKEND_ENV, "");
    assert_eq!(registry.select(None).unwrap().name(), "cpu");
    std::env::remove_var(BACKEND_ENV);
    assert_eq!(registry.select(None).unwrap().name(), "cpu");
}
