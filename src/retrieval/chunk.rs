//! Splitting documents into overlapping chunks of a counted number of tokens.
//!
//! Boundaries fall between tokens and are moved forward to a character boundary, and a chunk end
//! prefers the last whitespace in its final eighth, so words are rarely cut.

/// Chunk sizes, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpec {
    pub tokens: usize,
    pub overlap: usize,
}

/// One chunk of a document: its position and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextChunk<'a> {
    pub index: usize,
    pub text: &'a str,
}

/// Splits `text` into chunks of at most `spec.tokens` tokens, each starting `spec.overlap` tokens
/// before the previous one ended. Whitespace-only chunks are dropped.
pub fn split<'a>(text: &'a str, spec: ChunkSpec) -> Vec<TextChunk<'a>> {
    let ends = crate::tokens::token_ends(text);
    let size = spec.tokens.max(1);
    let step = size.saturating_sub(spec.overlap).max(1);
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < ends.len() {
        let last = (first + size).min(ends.len()) - 1;
        let start = char_floor(text, if first == 0 { 0 } else { ends[first - 1] });
        let end = if last + 1 == ends.len() {
            text.len()
        } else {
            word_end(text, start, char_floor(text, ends[last]))
        };
        let piece = &text[start..end];
        if !piece.trim().is_empty() {
            chunks.push(TextChunk {
                index: chunks.len(),
                text: piece,
            });
        }
        if last + 1 == ends.len() {
            break;
        }
        first += step;
    }
    chunks
}

fn char_floor(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `end`, moved back to just after the last whitespace in the chunk's final eighth, if any.
fn word_end(text: &str, start: usize, end: usize) -> usize {
    let from = char_floor(text, end - (end - start) / 8);
    text[from..end]
        .rfind(char::is_whitespace)
        .map_or(end, |i| from + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> String {
        (0..n).map(|i| format!("word{i} ")).collect()
    }

    #[test]
    fn chunks_hold_at_most_their_tokens_and_overlap() {
        let text = words(500);
        let spec = ChunkSpec {
            tokens: 64,
            overlap: 16,
        };
        let chunks = split(&text, spec);
        assert!(chunks.len() > 1);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index, i);
            assert!(crate::tokens::count(c.text) <= 64 + 1, "{}", c.text);
        }
        // Consecutive chunks share text: the overlap.
        for pair in chunks.windows(2) {
            let tail = pair[0].text.split_whitespace().last().unwrap_or_default();
            assert!(pair[1].text.contains(tail), "overlap lost between chunks");
        }
        // Every word is in some chunk.
        for i in 0..500 {
            let w = format!("word{i} ");
            assert!(chunks.iter().any(|c| c.text.contains(w.trim_end())), "{w}");
        }
    }

    #[test]
    fn short_text_is_one_chunk_and_blank_text_none() {
        let spec = ChunkSpec {
            tokens: 256,
            overlap: 32,
        };
        assert_eq!(split("Refunds within 14 days.", spec).len(), 1);
        assert!(split("   \n\t ", spec).is_empty());
        assert!(split("", spec).is_empty());
    }

    #[test]
    fn multibyte_text_splits_on_character_boundaries() {
        let text = "日本語のテキストと émojis 🎉🎉🎉 ".repeat(200);
        let chunks = split(
            &text,
            ChunkSpec {
                tokens: 17,
                overlap: 5,
            },
        );
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|c| !c.text.is_empty()));
    }
}
