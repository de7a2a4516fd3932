//! Turning generated tokens into text pieces for streaming: complete UTF-8 only, stop strings
//! honoured, nothing emitted that a stop string might still swallow.
//!
//! Byte-level BPE tokens are byte strings: an emoji or a CJK character is often split over two
//! or three tokens, so decoding token by token would show replacement characters. We keep the
//! raw bytes and release only complete characters. Stop sequences are matched on the decoded
//! text (they can span tokens); text that ends with the beginning of a stop string is held back
//! until the next token shows whether the stop string completes.

/// Result of adding one token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushOutcome {
    /// Text that can be shown now (possibly empty).
    pub piece: String,
    /// A stop string was found: generation must end; the text up to it has been released.
    pub stopped: bool,
}

/// Incremental detokenizer with stop-string handling for one sequence.
#[derive(Debug, Clone, Default)]
pub struct TextAssembler {
    /// Bytes of an incomplete trailing UTF-8 character.
    pending: Vec<u8>,
    /// All decoded text so far (cut at the stop string once one is found).
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stop: Vec<String>,
    longest_stop: usize,
    stopped: bool,
}

impl TextAssembler {
    /// An assembler that stops at any of `stop` (non-empty strings).
    pub fn new(stop: Vec<String>) -> Self {
        let longest_stop = stop.iter().map(String::len).max().unwrap_or(0);
        Self {
            stop,
            longest_stop,
            ..Self::default()
        }
    }

    /// Everything decoded so far (without the stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Adds the bytes of one token; returns what may be shown now.
    pub fn push(&mut self, bytes: &[u8]) -> PushOutcome {
        if self.stopped {
            return PushOutcome {
                piece: String::new(),
                stopped: true,
            };
        }
        let before = self.text.len();
        self.pending.extend_from_slice(bytes);
        self.drain_complete_chars(false);
        // Only text near the end can complete a stop string for the first time.
        let mut from = before.saturating_sub(self.longest_stop.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            let piece = self.release(self.text.len());
            return PushOutcome {
                piece,
                stopped: true,
            };
        }
        let hold = self.held_back();
        let piece = self.release(self.text.len() - hold);
        PushOutcome {
            piece,
            stopped: false,
        }
    }

    /// Ends the sequence (EOS or length): releases held-back text and any incomplete trailing
    /// bytes (as U+FFFD, like a lossy decode of the whole output would show them).
    pub fn finish(&mut self) -> String {
        if !self.stopped {
            self.drain_complete_chars(true);
        }
        self.release(self.text.len())
    }

    /// Moves complete characters (and, where bytes are invalid, U+FFFD) from `pending` to
    /// `text`; with `flush`, an incomplete tail becomes U+FFFD too.
    fn drain_complete_chars(&mut self, flush: bool) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    self.text
                        .push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            if flush {
                                self.text.push(char::REPLACEMENT_CHARACTER);
                                self.pending.clear();
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Length of the longest suffix of `text` that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut hold = 0;
        for s in &self.stop {
            for k in (1..s.len()).rev() {
                if k <= hold {
                    break;
                }
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        hold
    }

    fn release(&mut self, upto: usize) -> String {
        if upto <= self.emitted {
            return String::new();
        }
        let piece = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], tokens: &[&[u8]]) -> (Vec<String>, String, bool) {
        let mut a = TextAssembler::new(stop.iter().map(|s| (*s).to_string()).collect());
        let mut pieces = Vec::new();
        let mut stopped = false;
        for t in tokens {
            let o = a.push(t);
            pieces.push(o.piece);
            if o.stopped {
                stopped = true;
                break;
            }
        }
        if !stopped {
            pieces.push(a.finish());
        }
        (pieces, a.text().to_string(), stopped)
    }

    #[test]
    fn multibyte_char_split_over_tokens_is_released_whole() {
        let emoji = "🙂".as_bytes(); // 4 bytes
        let (pieces, text, _) = run(&[], &[b"a", &emoji[..1], &emoji[1..3], &emoji[3..], b"b"]);
        assert_eq!(pieces, ["a", "", "", "🙂", "b", ""]);
        assert_eq!(text, "a🙂b");
    }

    #[test]
    fn invalid_and_truncated_bytes_become_replacement_chars() {
        let (pieces, text, _) = run(&[], &[b"x\xff", b"\xf0\x9f"]);
        assert_eq!(pieces.concat(), "x\u{fffd}\u{fffd}");
        assert_eq!(text, String::from_utf8_lossy(b"x\xff\xf0\x9f"));
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_never_shown() {
        let (pieces, text, stopped) = run(&["END"], &[b"hello E", b"N", b"D tail"]);
        assert!(stopped);
        assert_eq!(text, "hello ");
        assert_eq!(pieces, ["hello ", "", ""]);
    }

    #[test]
    fn partial_stop_prefix_is_released_when_it_does_not_complete() {
        let (pieces, text, stopped) = run(&["END"], &[b"hello E", b"x"]);
        assert!(!stopped);
        assert_eq!(pieces, ["hello ", "Ex", ""]);
        assert_eq!(text, "hello Ex");
    }

    #[test]
    fn earliest_stop_wins() {
        let (_, text, stopped) = run(&["cd", "b"], &[b"abcd"]);
        assert!(stopped);
        assert_eq!(text, "a");
    }
}
