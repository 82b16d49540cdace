//! Bad input: every validation rule of core (through `moemla_core::ops` on the backend, so
//! each backend is shown to reject identically), and index contents checked by the backend.

pub mod experts;
pub mod indices;
pub mod mla;
pub mod route;

use moemla_core::vendor::DeviceBuffer;
use moemla_core::{DType, DeviceTensor, Error, Op, Result};
use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

/// A buffer-less tensor. Validation rejects calls before a backend touches any buffer, so
/// validation tests build their arguments from shells (zero-sized dims included, which not
/// every device can allocate). Should validation wrongly pass, the backend fails to
/// downcast the shell and the test sees the wrong error.
#[derive(Debug)]
struct Shell;

impl DeviceBuffer for Shell {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A shell tensor owned (by name) by `backend`.
pub(crate) fn shell(backend: &str, dims: &[usize], dtype: DType) -> DeviceTensor {
    DeviceTensor::new(Arc::new(Shell), backend.into(), dims, dtype)
}

/// Shell tensors for arguments `names` with `(dims, dtype)` each, owned by `backend` except
/// the one named `foreign`, which belongs to another backend.
pub(crate) fn shells(
    backend: &str,
    names: &[&str],
    args: &[(Vec<usize>, DType)],
    foreign: Option<&str>,
) -> Vec<DeviceTensor> {
    names
        .iter()
        .zip(args)
        .map(|(&name, (dims, dtype))| {
            let owner = if foreign == Some(name) {
                "elsewhere"
            } else {
                backend
            };
            shell(owner, dims, *dtype)
        })
        .collect()
}

/// The key fields of an expected error.
#[derive(Clone, Debug)]
pub(crate) enum Expect {
    /// `Error::Rank` (op, arg, got rank).
    Rank(Op, &'static str, usize),
    /// `Error::Dim` (op, arg, dim, dim name, got).
    Dim(Op, &'static str, usize, &'static str, usize),
    /// `Error::DType` (op, arg, got).
    DType(Op, &'static str, DType),
    /// `Error::Param` (op, param, a phrase of the rule in `expected` that tells apart the
    /// rules sharing a parameter, e.g. "<= E" vs "topk_group * E / n_group").
    Param(Op, &'static str, &'static str),
    /// `Error::WrongBackend` (op, arg).
    WrongBackend(Op, &'static str),
}

impl Expect {
    fn matches(&self, e: &Error) -> bool {
        match (self, e) {
            (Expect::Rank(o, a, g), Error::Rank { op, arg, got, .. }) => {
                (o, a, g) == (op, arg, got)
            }
            (
                Expect::Dim(o, a, d, n, g),
                Error::Dim {
                    op,
                    arg,
                    dim,
                    dim_name,
                    got,
                    ..
                },
            ) => (o, a, d, n, g) == (op, arg, dim, dim_name, got),
            (Expect::DType(o, a, g), Error::DType { op, arg, got, .. }) => {
                (o, a, g) == (op, arg, got)
            }
            (
                Expect::Param(o, p, rule),
                Error::Param {
                    op,
                    param,
                    expected,
                    ..
                },
            ) => (o, p) == (op, param) && expected.contains(rule),
            (Expect::WrongBackend(o, a), Error::WrongBackend { op, arg, .. }) => {
                (o.name(), *a) == (*op, *arg)
            }
            _ => false,
        }
    }
}

/// Collects the mismatches of a table of bad-input cases and panics listing all of them.
#[derive(Default)]
pub(crate) struct Cases(Vec<String>);

impl Cases {
    /// Records a failure unless `got` is an error matching `want`.
    pub(crate) fn expect<T: Debug>(&mut self, label: &str, got: Result<T>, want: Expect) {
        match got {
            Err(e) if want.matches(&e) => {}
            Err(e) => self
                .0
                .push(format!("{label}: expected {want:?}, got error {e:?}")),
            Ok(v) => self
                .0
                .push(format!("{label}: expected {want:?}, got Ok({v:?})")),
        }
    }

    /// Panics if any case failed.
    pub(crate) fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} case(s) failed:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}
