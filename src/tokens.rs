//! Token counting with a real BPE tokenizer (o200k_base, OpenAI's current encoding).
//!
//! Chunk sizes, context budgets and cost ranking are counted, not guessed from bytes. Other
//! vendors' tokenizers differ by a few percent, so context budgets keep [`CONTEXT_MARGIN_PERCENT`]
//! in reserve. The tokenizer's tables (tens of MB) load on first use, so a worker that never
//! counts never pays for them; counting costs microseconds per prompt, so the job path counts only
//! where the answer depends on it.

use tiktoken_rs::CoreBPE;

/// Share of a model's context window left unused, for tokenizers that count differently.
pub const CONTEXT_MARGIN_PERCENT: u64 = 5;

/// Tokens a chat message costs beyond its text (role and framing): generous for every known API
/// shape (OpenAI's chat format adds 3 to 4), and the one figure both counted prompts and byte
/// bounds use.
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 8;

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// The number of tokens in `text`.
pub fn count(text: &str) -> u64 {
    bpe().encode_ordinary(text).len() as u64
}

/// The byte offset where each token of `text` ends, in order (the last is `text.len()`).
pub fn token_ends(text: &str) -> Vec<usize> {
    let bpe = bpe();
    let mut end = 0;
    bpe.encode_ordinary(text)
        .iter()
        .map(|&t| {
            end += bpe.decode_bytes(&[t]).map_or(0, |b| b.len());
            end.min(text.len())
        })
        .collect()
}

/// The usable input budget of a model: its window less the answer and the safety margin.
pub fn input_budget(context_window: u32, max_output_tokens: u32) -> u64 {
    let window = u64::from(context_window);
    (window - window * CONTEXT_MARGIN_PERCENT / 100).saturating_sub(u64::from(max_output_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tokens_and_finds_their_ends() {
        assert_eq!(count(""), 0);
        let text = "Refunds are issued within 14 days. Überweisung möglich.";
        let ends = token_ends(text);
        assert_eq!(ends.len() as u64, count(text));
        assert_eq!(ends.last().copied(), Some(text.len()));
        assert!(ends.windows(2).all(|w| w[0] <= w[1]));
        assert!(count(text) < text.len() as u64 / 2, "BPE packs English");
    }

    #[test]
    fn budget_keeps_the_margin_and_the_answer() {
        assert_eq!(input_budget(10_000, 1_000), 9_500 - 1_000);
        assert_eq!(input_budget(100, 1_000), 0);
    }
}
