//! Detection metrics on scores (probability of fake) against labels (1 fake, 0 real):
//! ROC AUC, equal error rate, accuracy at 0.5 and log loss — the figures deepfake
//! papers report, computed exactly (no binning).

use serde::{Deserialize, Serialize};

/// Metrics of one evaluation, clip level and frame level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub clip_auc: f64,
    pub frame_auc: f64,
    pub acc: f64,
    pub eer: f64,
    pub log_loss: f64,
    pub clips: usize,
}

impl Metrics {
    /// From clip probabilities and labels, and frame probabilities with their clip's label.
    pub fn compute(
        clip_probs: &[f64],
        clip_labels: &[f64],
        frame_probs: &[f64],
        frame_labels: &[f64],
    ) -> Self {
        Metrics {
            clip_auc: auc(clip_probs, clip_labels),
            frame_auc: auc(frame_probs, frame_labels),
            acc: accuracy(clip_probs, clip_labels),
            eer: eer(clip_probs, clip_labels),
            log_loss: log_loss(clip_probs, clip_labels),
            clips: clip_probs.len(),
        }
    }
}

/// Probability that a random fake scores above a random real (ties count half): the
/// Mann–Whitney form of the ROC AUC. NaN without both classes.
pub fn auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        // A run of tied scores shares the mean of its ranks.
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] > 0.5 {
                rank_sum += mean_rank;
                pos += 1.0;
            }
        }
        i = j + 1;
    }
    let neg = scores.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The error rate where false positives and false negatives balance, interpolated
/// between the two thresholds that bracket the crossing.
pub fn eer(scores: &[f64], labels: &[f64]) -> f64 {
    let pos = labels.iter().filter(|&&l| l > 0.5).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let mut thresholds: Vec<f64> = scores.to_vec();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    // Threshold t flags score ≥ t as fake. Walking t upwards, FPR falls and FNR rises.
    let rates = |t: f64| {
        let fp = scores.iter().zip(labels).filter(|(s, l)| **s >= t && **l <= 0.5).count() as f64;
        let fnr = scores.iter().zip(labels).filter(|(s, l)| **s < t && **l > 0.5).count() as f64;
        (fp / neg, fnr / pos)
    };
    let mut prev = (1.0, 0.0);
    for t in thresholds.into_iter().chain(std::iter::once(f64::INFINITY)) {
        let (fpr, fnr) = rates(t);
        if fnr >= fpr {
            let (d0, d1) = (prev.0 - prev.1, fpr - fnr);
            let w = if d0 - d1 == 0.0 { 0.0 } else { d0 / (d0 - d1) };
            return prev.0 + w * (fpr - prev.0);
        }
        prev = (fpr, fnr);
    }
    prev.0
}

pub fn accuracy(probs: &[f64], labels: &[f64]) -> f64 {
    let right = probs.iter().zip(labels).filter(|(p, l)| (**p >= 0.5) == (**l > 0.5)).count();
    right as f64 / probs.len().max(1) as f64
}

/// Mean binary cross-entropy, probabilities clamped to [1e-7, 1 − 1e-7].
pub fn log_loss(probs: &[f64], labels: &[f64]) -> f64 {
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(p, l)| {
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            -(l * p.ln() + (1.0 - l) * (1.0 - p).ln())
        })
        .sum();
    total / probs.len().max(1) as f64
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUC by its definition: all pairs.
    fn auc_pairs(s: &[f64], l: &[f64]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] > 0.5 && l[j] <= 0.5 {
                    den += 1.0;
                    num += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        num / den
    }

    #[test]
    fn auc_matches_the_pairwise_definition_with_ties() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4];
        let l = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        assert!((auc(&s, &l) - auc_pairs(&s, &l)).abs() < 1e-12);
        assert_eq!(auc(&[0.1, 0.9], &[0.0, 1.0]), 1.0);
        assert_eq!(auc(&[0.9, 0.1], &[0.0, 1.0]), 0.0);
        assert!(auc(&[0.3, 0.4], &[1.0, 1.0]).is_nan(), "one class only");
    }

    #[test]
    fn eer_is_zero_when_separable_and_half_when_random() {
        assert_eq!(eer(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]), 0.0);
        assert_eq!(eer(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        // Scores that ignore the label: every threshold has FPR = 1 − FNR... the balance
        // point is 0.5.
        let s: Vec<f64> = (0..100).map(|i| (i / 2) as f64).collect();
        let l: Vec<f64> = (0..100).map(|i| (i % 2) as f64).collect();
        assert!((eer(&s, &l) - 0.5).abs() < 0.02, "{}", eer(&s, &l));
        // One fake among reals mis-ranked: 4 reals, 4 fakes, one of each swapped.
        let s = [0.1, 0.2, 0.3, 0.7, 0.6, 0.8, 0.9, 0.95];
        let l = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        assert!((eer(&s, &l) - 0.25).abs() < 1e-12, "{}", eer(&s, &l));
    }

    #[test]
    fn accuracy_and_log_loss() {
        assert_eq!(accuracy(&[0.2, 0.7, 0.6, 0.4], &[0.0, 1.0, 0.0, 0.0]), 0.75);
        let ll = log_loss(&[0.5, 0.5], &[0.0, 1.0]);
        assert!((ll - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(log_loss(&[0.0], &[1.0]).is_finite(), "clamped");
    }
}
