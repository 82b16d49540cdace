//! proptest properties of each op, generic over the backend. Each draws its run dtype from
//! the dtypes the backend lists; inputs come from a seeded [`crate::rng::Rng`] so a failing
//! case is reproduced by its printed seed.

pub mod experts;
pub mod mla;
pub mod route;
