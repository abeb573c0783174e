//! Stop strings over the streamed text.
//!
//! The stop string itself is never emitted, even in part: text that could still be the start of a
//! stop string is held back until the next piece shows whether it is one. Held text is always
//! shorter than the longest stop string, so each push costs O(held + piece) per stop string.

pub struct StopStringMatcher {
    /// Non-empty stop strings (an empty one would match before any text; validation rejects it).
    stops: Vec<String>,
    /// Text received but not emitted: a suffix that is a proper prefix of some stop string.
    held: String,
    stopped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string yet; `emit` may be shown now.
    Continue { emit: String },
    /// A stop string matched; `emit` is the text before it, and generation ends.
    Stopped { emit: String },
}

impl StopStringMatcher {
    pub fn new(stop: &[String]) -> Self {
        let stops = stop.iter().filter(|s| !s.is_empty()).cloned().collect();
        StopStringMatcher { stops, held: String::new(), stopped: false }
    }

    /// Feeds newly decoded text; returns what may be emitted now. On a match, emits everything
    /// before the earliest match and reports `Stopped`; after that every push is `Stopped` with
    /// nothing to emit.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Stopped { emit: String::new() };
        }
        if self.stops.is_empty() {
            return StopOutcome::Continue { emit: text.to_string() };
        }
        self.held.push_str(text);
        // Earliest start wins; `find` returns char boundaries because stop strings are valid UTF-8.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(at);
            return StopOutcome::Stopped { emit };
        }
        let keep = self.partial_match_len();
        let rest = self.held.split_off(self.held.len() - keep);
        StopOutcome::Continue { emit: std::mem::replace(&mut self.held, rest) }
    }

    /// End of generation without a stop match: releases the held-back text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string. Only char
    /// boundaries are tried, so held-back text never splits a character.
    fn partial_match_len(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let first = self.held.len().saturating_sub(longest.saturating_sub(1));
        (first..self.held.len())
            .filter(|&i| self.held.is_char_boundary(i))
            .map(|i| &self.held[i..])
            .find(|suffix| self.stops.iter().any(|s| s.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopStringMatcher {
        StopStringMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn emitted(outcome: StopOutcome) -> String {
        match outcome {
            StopOutcome::Continue { emit } => emit,
            StopOutcome::Stopped { emit } => panic!("unexpected stop after {emit:?}"),
        }
    }

    #[test]
    fn no_stop_strings_pass_everything_through() {
        let mut m = matcher(&[]);
        assert_eq!(emitted(m.push("hello ")), "hello ");
        assert_eq!(emitted(m.push("wörld")), "wörld");
        assert_eq!(m.finish(), "");
        let mut m = matcher(&[""]);
        assert_eq!(emitted(m.push("empty stops are ignored")), "empty stops are ignored");
    }

    #[test]
    fn stop_string_spanning_pushes_is_never_emitted() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(emitted(m.push("abc S")), "abc ");
        assert_eq!(emitted(m.push("T")), "");
        assert_eq!(emitted(m.push("O")), "");
        assert_eq!(m.push("P and more"), StopOutcome::Stopped { emit: String::new() });
        assert_eq!(m.push("later"), StopOutcome::Stopped { emit: String::new() });
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn text_before_a_match_in_one_push_is_emitted() {
        let mut m = matcher(&["\n\n"]);
        assert_eq!(emitted(m.push("first line\n")), "first line");
        assert_eq!(m.push("\nsecond"), StopOutcome::Stopped { emit: String::new() });
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("answer: 42</s>trailing"), StopOutcome::Stopped { emit: "answer: 42".into() });
    }

    #[test]
    fn false_partial_match_is_released_later() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(emitted(m.push("ST")), "");
        assert_eq!(emitted(m.push("OCK")), "STOCK");
        // A held suffix that starts over as a new candidate: "SST" holds "ST" only.
        assert_eq!(emitted(m.push(" SST")), " S");
        assert_eq!(emitted(m.push("ART")), "START");
        assert_eq!(emitted(m.push(" STO")), " ");
        assert_eq!(m.finish(), "STO");
        assert_eq!(m.finish(), "", "finish releases the held text once");
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let mut m = matcher(&["world", "lo w", "xyz"]);
        assert_eq!(m.push("hello world"), StopOutcome::Stopped { emit: "hel".into() });
        let mut m = matcher(&["END", "ND!"]);
        assert_eq!(emitted(m.push("the E")), "the ");
        assert_eq!(m.push("ND!"), StopOutcome::Stopped { emit: String::new() });
        // The longer candidate is held even after a shorter stop string's prefix is ruled out.
        let mut m = matcher(&["ab", "aXYZ"]);
        assert_eq!(emitted(m.push("1aXY")), "1");
        assert_eq!(m.push("Z"), StopOutcome::Stopped { emit: String::new() });
    }

    #[test]
    fn multibyte_characters_around_stops_stay_whole() {
        let mut m = matcher(&["🦀世", "é!"]);
        assert_eq!(emitted(m.push("naïve 🦀")), "naïve ");
        assert_eq!(emitted(m.push("界 café")), "🦀界 caf");
        assert_eq!(m.push("!ñ"), StopOutcome::Stopped { emit: String::new() });
        // A stop string sharing a first byte, not a first char, with the text holds nothing back.
        let mut m = matcher(&["世"]);
        assert_eq!(emitted(m.push("丁")), "丁");
        let mut m = matcher(&["世界"]);
        assert_eq!(emitted(m.push("ab世")), "ab");
        assert_eq!(m.finish(), "世");
    }
}
