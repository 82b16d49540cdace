//! stub
use crate::loader::OpApi;
pub const NOTES: [&str; 0] = [];
pub fn available(_: &OpApi) -> bool {
    false
}
pub fn run(
    _: &crate::AscendBackend,
    _: &moemla_core::calls::MlaDecodeCall<'_>,
) -> moemla_core::Result<moemla_core::MlaDecodeOutput> {
    todo!()
}
