//! From logits to a probability distribution and its best labels.

/// Softmax over `logits`, computed stably (shifted by the maximum).
///
/// A non-finite logit poisons the whole distribution, so it is reported instead of returned.
pub fn softmax(logits: &[f32]) -> Result<Vec<f32>, String> {
    if let Some(bad) = logits.iter().find(|x| !x.is_finite()) {
        return Err(format!("model returned a non-finite logit ({bad})"));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    Ok(exps.into_iter().map(|e| e / sum).collect())
}

/// Indices of the `k` highest scores, best first; ties keep the lower index first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_hand_computed_values() {
        // e^0 : e^ln2 : e^ln(1) = 1 : 2 : 1
        let p = softmax(&[0.0, std::f32::consts::LN_2, 0.0]).unwrap();
        assert!((p[0] - 0.25).abs() < 1e-6, "{p:?}");
        assert!((p[1] - 0.5).abs() < 1e-6, "{p:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0]).unwrap();
        assert_eq!(p, vec![0.5, 0.5]);
    }

    #[test]
    fn softmax_refuses_non_finite_logits() {
        assert!(softmax(&[0.0, f32::NAN]).unwrap_err().contains("non-finite"));
        assert!(softmax(&[f32::INFINITY]).is_err());
    }

    #[test]
    fn top_k_orders_best_first_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.2, 0.5], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[0.1, 0.5], 5), vec![1, 0]);
    }
}
