//! `moe_experts` in f64: per token and slot, a SwiGLU FFN of the chosen expert, weighted.

/// `y` [T, H] for `x` [T, H], `w13` [E, 2I, H], `w2` [E, H, I], `ids`/`weights` [T, k].
/// Ids must lie in [-1, E); a slot with id -1 or weight 0 (either sign) contributes nothing,
/// even when its expert's output is NaN or inf (the slot is skipped, never 0 * NaN).
#[allow(clippy::too_many_arguments)]
pub fn moe_experts(
    x: &[f64],
    w13: &[f64],
    w2: &[f64],
    ids: &[i32],
    weights: &[f64],
    tokens: usize,
    hidden: usize,
    inter: usize,
    top_k: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; tokens * hidden];
    for t in 0..tokens {
        let xt = &x[t * hidden..(t + 1) * hidden];
        for j in 0..top_k {
            let (id, w) = (ids[t * top_k + j], weights[t * top_k + j]);
            if id < 0 || w == 0.0 {
                continue;
            }
            let e = id as usize;
            let gate_up = &w13[e * 2 * inter * hidden..(e + 1) * 2 * inter * hidden];
            let act: Vec<f64> = (0..inter)
                .map(|i| {
                    let g = dot(&gate_up[i * hidden..(i + 1) * hidden], xt);
                    let u = dot(&gate_up[(inter + i) * hidden..(inter + i + 1) * hidden], xt);
                    silu(g) * u
                })
                .collect();
            let down = &w2[e * hidden * inter..(e + 1) * hidden * inter];
            for h in 0..hidden {
                y[t * hidden + h] += w * dot(&down[h * inter..(h + 1) * inter], &act);
            }
        }
    }
    y
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_by_one_expert_by_hand() {
        // H = I = 1: y = w * w2 * silu(w1 x) * (w3 x) = 2 * 0.5 * silu(2) * 6.
        let y = moe_experts(&[2.0], &[1.0, 3.0], &[0.5], &[0], &[2.0], 1, 1, 1, 1);
        let silu2 = 2.0 / (1.0 + (-2.0f64).exp());
        assert!((y[0] - 6.0 * silu2).abs() < 1e-12);
    }

    #[test]
    fn zero_weight_slots_skip_a_nan_expert() {
        // Expert 1 has a NaN gate weight: with weight +0 or -0 it adds nothing.
        let w13 = [1.0, 1.0, f64::NAN, 1.0];
        let w2 = [1.0, 1.0];
        let s = 1.0 / (1.0 + (-1.0f64).exp());
        for zero in [0.0, -0.0] {
            let y = moe_experts(&[1.0], &w13, &w2, &[0, 1], &[2.0, zero], 1, 1, 1, 2);
            assert!((y[0] - 2.0 * s).abs() < 1e-12, "{zero}: {}", y[0]);
        }
        let y = moe_experts(&[1.0], &w13, &w2, &[0, 1], &[2.0, 1.0], 1, 1, 1, 2);
        assert!(y[0].is_nan());
    }

    #[test]
    fn minus_one_slots_are_skipped_and_slots_add() {
        // Two experts: e0 (w1 1, w3 1, w2 1), e1 (w1 1, w3 1, w2 -1); x = 1.
        let w13 = [1.0, 1.0, 1.0, 1.0];
        let w2 = [1.0, -1.0];
        let s = 1.0 / (1.0 + (-1.0f64).exp());
        let y = moe_experts(
            &[1.0],
            &w13,
            &w2,
            &[0, -1, 1],
            &[3.0, 100.0, 1.0],
            1,
            1,
            1,
            3,
        );
        assert!((y[0] - (3.0 * s - s)).abs() < 1e-12);
    }
}
