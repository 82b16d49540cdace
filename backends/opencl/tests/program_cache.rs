//! Each (kernel module, storage dtype) program is built once per process.

mod common;

use common::{backend, float_tensor};
use moemla_core::{ops, DType, RouteParams};

#[test]
fn each_program_is_built_once_and_reused() {
    let Some(be) = backend() else { return };
    let route = |dtype| {
        let (logits, _) = float_tensor(&*be, &[2, 8], &common::uniform(3, 16, -1.0, 1.0), dtype);
        ops::moe_route(&*be, &logits, None, &RouteParams::deepseek_v2_lite()).unwrap();
    };
    let before = be.programs_built();
    route(DType::F32);
    assert_eq!(
        be.programs_built(),
        before + 1,
        "first F32 call builds moe_route once"
    );
    route(DType::F32);
    route(DType::F32);
    assert_eq!(be.programs_built(), before + 1, "later F32 calls reuse it");
    route(DType::BF16);
    assert_eq!(be.programs_built(), before + 2, "BF16 is its own program");
}
