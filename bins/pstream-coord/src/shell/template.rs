//! The command template: `{}` and the other placeholders of GNU parallel, replaced
//! in each argument with the item's bytes. No shell is involved, so an item is one
//! argument (or part of one) whatever it holds: spaces, quotes, newlines, bytes
//! that are not UTF-8.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// One piece of an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    /// `{}`
    Item,
    /// `{#}`: the 1-based line number.
    Seq,
    /// `{/}`
    Basename,
    /// `{//}`
    Dirname,
    /// `{.}`
    NoExtension,
    /// `{/.}`
    BasenameNoExtension,
}

/// The placeholders, longest first where one is a prefix of another.
const PLACEHOLDERS: [(&[u8], Piece); 6] = [
    (b"{}", Piece::Item),
    (b"{#}", Piece::Seq),
    (b"{//}", Piece::Dirname),
    (b"{/.}", Piece::BasenameNoExtension),
    (b"{/}", Piece::Basename),
    (b"{.}", Piece::NoExtension),
];

/// A command line with placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    args: Vec<Vec<Piece>>,
}

impl Template {
    /// Parse `argv`. Without any placeholder that stands for the item, the item is
    /// appended as the last argument (as `parallel` and `xargs` do).
    pub fn new(argv: &[OsString]) -> Template {
        let mut args: Vec<Vec<Piece>> = argv.iter().map(|a| parse(a.as_bytes())).collect();
        let uses_item = args
            .iter()
            .flatten()
            .any(|p| !matches!(p, Piece::Text(_) | Piece::Seq));
        if !uses_item {
            args.push(vec![Piece::Item]);
        }
        Template { args }
    }

    /// The argv for `item`, on line `line`.
    pub fn expand(&self, item: &[u8], line: u64) -> Vec<OsString> {
        self.args
            .iter()
            .map(|pieces| {
                let mut arg = Vec::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => arg.extend_from_slice(t),
                        Piece::Item => arg.extend_from_slice(item),
                        Piece::Seq => arg.extend_from_slice(line.to_string().as_bytes()),
                        Piece::Basename => arg.extend_from_slice(basename(item)),
                        Piece::Dirname => arg.extend_from_slice(&dirname(item)),
                        Piece::NoExtension => arg.extend_from_slice(no_extension(item)),
                        Piece::BasenameNoExtension => {
                            arg.extend_from_slice(no_extension(basename(item)))
                        }
                    }
                }
                OsString::from_vec(arg)
            })
            .collect()
    }
}

fn parse(arg: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut i = 0;
    'outer: while i < arg.len() {
        if arg[i] == b'{' {
            for (name, piece) in &PLACEHOLDERS {
                if arg[i..].starts_with(name) {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece.clone());
                    i += name.len();
                    continue 'outer;
                }
            }
        }
        text.push(arg[i]);
        i += 1;
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// `{/}`: what follows the last `/` (GNU parallel's `s:.*/::`).
fn basename(item: &[u8]) -> &[u8] {
    match item.iter().rposition(|&b| b == b'/') {
        Some(at) => &item[at + 1..],
        None => item,
    }
}

/// `{//}`: the directory, as `dirname` prints it (`.` for a bare name).
fn dirname(item: &[u8]) -> Vec<u8> {
    let trimmed = {
        let end = item.iter().rposition(|&b| b != b'/').map_or(0, |at| at + 1);
        &item[..end]
    };
    if trimmed.is_empty() {
        return if item.is_empty() {
            b".".to_vec()
        } else {
            b"/".to_vec()
        };
    }
    match trimmed.iter().rposition(|&b| b == b'/') {
        None => b".".to_vec(),
        Some(at) => {
            let dir = &trimmed[..at];
            let end = dir.iter().rposition(|&b| b != b'/').map_or(0, |at| at + 1);
            if end == 0 {
                b"/".to_vec()
            } else {
                dir[..end].to_vec()
            }
        }
    }
}

/// `{.}`: without the last extension (GNU parallel's `s:\.[^/.]*$::`).
fn no_extension(item: &[u8]) -> &[u8] {
    match item.iter().rposition(|&b| b == b'.' || b == b'/') {
        Some(at) if item[at] == b'.' => &item[..at],
        _ => item,
    }
}

/// An argument as a POSIX shell would read it back: bare when it is made of safe
/// characters, in single quotes otherwise. Bytes that are not UTF-8 are kept.
pub fn shell_quote(arg: &[u8], out: &mut Vec<u8>) {
    let safe = |b: &u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(b);
    if !arg.is_empty() && arg.iter().all(safe) {
        out.extend_from_slice(arg);
        return;
    }
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// A command line as a shell would read it back.
pub fn command_line(argv: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        shell_quote(arg.as_bytes(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(argv: &[&str], item: &[u8], line: u64) -> Vec<Vec<u8>> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        Template::new(&argv)
            .expand(item, line)
            .into_iter()
            .map(OsString::into_vec)
            .collect()
    }

    #[test]
    fn placeholders_as_gnu_parallel_replaces_them() {
        let item = b"dir/sub/file.tar.gz";
        assert_eq!(
            expand(
                &["x", "{}", "{#}", "{/}", "{//}", "{.}", "{/.}", "a{}b", "{x}"],
                item,
                7
            ),
            [
                &b"x"[..],
                item,
                b"7",
                b"file.tar.gz",
                b"dir/sub",
                b"dir/sub/file.tar",
                b"file.tar",
                b"adir/sub/file.tar.gzb",
                b"{x}"
            ]
        );
        assert_eq!(expand(&["{.}"], b"a.b/c", 1), [b"a.b/c"]);
        assert_eq!(expand(&["{//}"], b"c", 1), [b"."]);
        assert_eq!(expand(&["{//}"], b"/c", 1), [b"/"]);
        assert_eq!(expand(&["{/}"], b"a/", 1), [b""]);
        assert_eq!(expand(&["{/.}"], b".bashrc", 1), [b""]);
    }

    #[test]
    fn without_a_placeholder_the_item_is_the_last_argument() {
        assert_eq!(
            expand(&["echo", "hi"], b"a b", 1),
            [&b"echo"[..], b"hi", b"a b"]
        );
        // {#} alone does not stand for the item.
        assert_eq!(
            expand(&["echo", "{#}"], b"x", 3),
            [&b"echo"[..], b"3", b"x"]
        );
        assert_eq!(expand(&["echo", "{/}"], b"d/x", 3), [&b"echo"[..], b"x"]);
        assert_eq!(expand(&["echo", ""], b"x", 3), [&b"echo"[..], b"", b"x"]);
    }

    #[test]
    fn items_stay_one_argument_whatever_they_hold() {
        let item = b"it's \"a\" $(x)\n\xff";
        assert_eq!(expand(&["cat", "--", "{}"], item, 1)[2], item);
    }

    #[test]
    fn quoting_reads_back_as_the_same_words() {
        let mut out = Vec::new();
        shell_quote(b"it's a test", &mut out);
        assert_eq!(out, b"'it'\\''s a test'");
        let line = command_line(&[OsString::from("echo"), OsString::from("a b"), "".into()]);
        assert_eq!(line, b"echo 'a b' ''");
    }
}
