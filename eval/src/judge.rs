//! Judged benchmarks (AlpacaEval, Arena-Hard, MT-Bench): a judge scores each conversation,
//! and an answer's win over the baseline's answer to the same prompt is
//! `sigmoid(r(answer) - r(baseline))` — the Bradley–Terry probability that the judge prefers
//! it. The win rate is the mean of that over the items.
//!
//! The judge is a reward model, not GPT-4 as the published leaderboards use: its numbers are
//! comparable between policies judged by the same model, not with the leaderboards.

/// One conversation: `(role, content)` messages, the last one the assistant's answer.
pub type Conversation = Vec<(String, String)>;

/// Scores conversations (higher is better).
pub trait Judge {
    fn score(&self, conversations: &[Conversation]) -> Result<Vec<f32>, String>;
}

/// The Bradley–Terry probability that `ours` beats `baseline`.
pub fn win_probability(ours: f32, baseline: f32) -> f64 {
    1.0 / (1.0 + (-(f64::from(ours) - f64::from(baseline))).exp())
}

/// The mean of [`win_probability`] over pairs.
pub fn win_rate(pairs: &[(f32, f32)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    pairs
        .iter()
        .map(|&(a, b)| win_probability(a, b))
        .sum::<f64>()
        / pairs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn win_rate_is_the_mean_sigmoid_of_the_margins() {
        // 1/(1+e^-1) = 0.7310585786300049, 1/(1+e^2) = 0.11920292202211755 (by hand).
        assert!((win_probability(1.5, 0.5) - 0.7310585786300049).abs() < 1e-12);
        let rate = win_rate(&[(1.5, 0.5), (0.0, 2.0), (3.0, 3.0)]);
        let expected = (0.7310585786300049 + 0.11920292202211755 + 0.5) / 3.0;
        assert!((rate - expected).abs() < 1e-12);
        assert_eq!(win_rate(&[]), 0.0);
    }
}
