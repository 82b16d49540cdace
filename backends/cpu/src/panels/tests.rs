use super::*;
use crate::test_util::Lcg;
use kernel::Pass;

/// Values in [-1, 1) from a fixed seed.
fn values(len: usize, seed: u64) -> Vec<f32> {
    Lcg::new(seed).vec(len, -1.0, 1.0)
}

#[test]
fn panels_hold_each_groups_rows_column_by_column_and_unpack_to_the_tensor() {
    // I = 21 (a full panel and a padded one per group), H = 5; then a Down tensor.
    for (kind, dims) in [
        (ExpertWeight::GateUp, [3, 42, 5]),
        (ExpertWeight::Down, [2, 37, 9]),
        (ExpertWeight::Down, [1, 16, 1]),
    ] {
        let [e, n, k] = dims;
        let w = values(e * n * k, 7);
        let layout = Layout::of(kind, dims);
        let p = PanelWeights::pack(&w, layout).unwrap();
        let rows = layout.rows;
        for expert in 0..e {
            for group in 0..layout.groups {
                for panel in 0..layout.panels() {
                    let got = p.panel(expert, group, panel);
                    for col in 0..k {
                        for lane in 0..LANES {
                            let row = panel * LANES + lane;
                            let want = match row < rows {
                                true => w[((expert * n) + group * rows + row) * k + col],
                                false => 0.0,
                            };
                            assert_eq!(got[col * LANES + lane], want, "{kind:?} {dims:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(p.unpack().unwrap(), w, "{kind:?} {dims:?}");
    }
}

#[test]
fn products_match_an_f64_reference_at_every_block_shape() {
    if !available() {
        eprintln!("skipped: no AVX-512F");
        return;
    }
    // k = 37: two full column panels and a part; 16: exactly one; 1: one column.
    for k in [37usize, 16, 1] {
        let chunks = k.div_ceil(LANES);
        for panels in 1..=MAX_BLOCK_PANELS {
            for tokens in 1..=MAX_BLOCK_TOKENS {
                // Column panels of an expert with `tokens + 2` tokens; the block starts at
                // its second token.
                let stride = (tokens + 2) * LANES;
                let x_all = values(chunks * stride, 11 + tokens as u64);
                let x = &x_all[LANES..];
                let w: Vec<Vec<f32>> = (0..panels)
                    .map(|j| values(k * LANES, 3 + j as u64))
                    .collect();
                let init = values(tokens * LANES, 5);
                for (accumulate, prefetch) in [(false, true), (true, false), (true, true)] {
                    let mut out: Vec<Vec<f32>> = vec![init.clone(); panels];
                    let wr: Vec<&[f32]> = w.iter().map(|p| p.as_slice()).collect();
                    let mut or: Vec<&mut [f32]> =
                        out.iter_mut().map(|o| o.as_mut_slice()).collect();
                    assert!(kernel::products(
                        &wr,
                        (x, stride, tokens),
                        k,
                        &mut or,
                        Pass {
                            accumulate,
                            prefetch
                        }
                    ));
                    for j in 0..panels {
                        for t in 0..tokens {
                            for l in 0..LANES {
                                let mut want = if accumulate {
                                    init[t * LANES + l] as f64
                                } else {
                                    0.0
                                };
                                for kk in 0..k {
                                    let xv = x[kk / LANES * stride + t * LANES + kk % LANES];
                                    want += xv as f64 * w[j][kk * LANES + l] as f64;
                                }
                                let got = out[j][t * LANES + l] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-5 * (k as f64),
                                    "k {k} panels {panels} tokens {tokens} acc {accumulate}: \
                                     [{j}][{t}][{l}] {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "outside their slices")]
fn products_refuse_token_panels_past_the_slice() {
    let w = vec![0.0f32; 32 * LANES];
    let x = vec![0.0f32; 2 * 4 * LANES - 1]; // one value short of two column panels
    let mut out = vec![0.0f32; 4 * LANES];
    let pass = Pass {
        accumulate: false,
        prefetch: true,
    };
    kernel::products(&[&w], (&x, 4 * LANES, 4), 32, &mut [&mut out], pass);
}
