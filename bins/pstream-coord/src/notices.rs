//! The failed-line messages on stderr, capped: a million lines that fail the same
//! way print a few messages and a count, not a million (the `--errors` file keeps a
//! record of every one).
//!
//! Two failures are "the same" when their kind and their message agree once the
//! failed line's own text is blanked out of the message: `"1" is not an i64` and
//! `"2" is not an i64` are the same failure, `no such file: a` and `no such file: b`
//! too.

use std::collections::HashMap;

/// Messages shown for each kind of failure before the rest are only counted.
pub const SHOWN: u64 = 5;

/// Kinds of failure remembered; a new kind past these is shown, never counted.
const KINDS: usize = 1000;

/// What the pump asks before printing a failed line's message.
#[derive(Debug, Default)]
pub struct Notices {
    /// By (kind, blanked message): how many failures, and the first line's number.
    seen: HashMap<(String, String), Seen>,
    /// In the order the kinds first failed, for the closing lines.
    order: Vec<(String, String)>,
}

#[derive(Debug)]
struct Seen {
    count: u64,
    first_line: u64,
}

impl Notices {
    /// The line(s) to print for line `line` failing with `kind` and `message`:
    /// the message itself for the first [`SHOWN`] of its kind, with a note after the
    /// last of them; nothing after that.
    pub fn failed(&mut self, line: u64, input: &[u8], kind: &str, message: &str) -> Option<String> {
        let text = format!("pstream-coord: line {line}: {message}");
        let key = (kind.to_string(), blank(message, input));
        if !self.seen.contains_key(&key) {
            if self.seen.len() >= KINDS {
                return Some(text);
            }
            self.order.push(key.clone());
            self.seen.insert(
                key.clone(),
                Seen {
                    count: 0,
                    first_line: line,
                },
            );
        }
        let seen = self.seen.get_mut(&key).expect("inserted above");
        seen.count += 1;
        match seen.count {
            n if n < SHOWN => Some(text),
            n if n == SHOWN => Some(format!(
                "{text}\npstream-coord: more lines that fail like line {} are counted, \
                 not shown",
                seen.first_line
            )),
            _ => None,
        }
    }

    /// The closing lines: how many failures were not shown, by kind.
    pub fn summary(&self, errors_file: Option<&str>) -> Vec<String> {
        let keep = match errors_file {
            Some(path) => format!("every one is recorded in {path}"),
            None => "--errors FILE records every one".into(),
        };
        self.order
            .iter()
            .filter_map(|key| {
                let seen = &self.seen[key];
                (seen.count > SHOWN).then(|| {
                    format!(
                        "pstream-coord: {} more lines failed like line {} ({} in all; {keep})",
                        seen.count - SHOWN,
                        seen.first_line,
                        seen.count
                    )
                })
            })
            .collect()
    }
}

/// `message` with the line's text blanked out: its JSON or debug quoting if the
/// message quotes it, else each occurrence that stands as a word of its own (not
/// the `6` in `i64`).
fn blank(message: &str, input: &[u8]) -> String {
    let text = String::from_utf8_lossy(input);
    if text.is_empty() {
        return message.to_string();
    }
    for quoted in [
        format!("{text:?}"),
        serde_json::Value::from(&*text).to_string(),
    ] {
        if message.contains(&quoted) {
            return message.replace(&quoted, "\u{0}");
        }
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(message.len());
    let mut from = 0;
    for (at, _) in message.match_indices(&*text) {
        if at < from {
            continue; // Overlaps the previous occurrence.
        }
        let end = at + text.len();
        let alone =
            !word(message[..at].chars().next_back()) && !word(message[end..].chars().next());
        if alone {
            out.push_str(&message[from..at]);
            out.push('\u{0}');
            from = end;
        }
    }
    out.push_str(&message[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_is_shown_a_few_times_then_counted() {
        let mut n = Notices::default();
        let mut shown = Vec::new();
        for line in 1..=1000u64 {
            let input = line.to_string();
            let message = format!("could not be decoded: {input:?} is not an i64");
            if let Some(text) = n.failed(line, input.as_bytes(), "decode", &message) {
                shown.push(text);
            }
        }
        assert_eq!(shown.len(), SHOWN as usize);
        assert_eq!(
            shown[0],
            "pstream-coord: line 1: could not be decoded: \"1\" is not an i64"
        );
        assert!(shown[4].ends_with("more lines that fail like line 1 are counted, not shown"));
        assert_eq!(
            n.summary(Some("e.jsonl")),
            [
                "pstream-coord: 995 more lines failed like line 1 (1000 in all; every one is \
              recorded in e.jsonl)"
            ]
        );
    }

    #[test]
    fn only_the_line_itself_is_blanked() {
        assert_eq!(blank("\"6\" is not an i64", b"6"), "\u{0} is not an i64");
        assert_eq!(
            blank("6 * 2 overflows i64", b"6"),
            "\u{0} * 2 overflows i64"
        );
        assert_eq!(blank("no such file: a/b", b"a/b"), "no such file: \u{0}");
        assert_eq!(blank("abc", b""), "abc");
    }

    #[test]
    fn different_failures_are_all_shown() {
        let mut n = Notices::default();
        for line in 1..=20u64 {
            let message = format!("failed: reason number {}", line * 1000);
            assert!(n.failed(line, b"x", "failed", &message).is_some());
        }
        // Same message, another kind: another failure.
        assert!(n
            .failed(21, b"x", "decode", "failed: reason number 1000")
            .is_some());
        assert!(n.summary(None).is_empty());
    }
}
