//! What a deploy changed: a line diff of the serving configuration's text
//! against the deployed one, for the deploy history. Values of keys that
//! name secrets (`token`, `password`, `secret`) are never shown, nor the
//! continuation lines of such a value written over several lines (a
//! multi-line string, an array or table).

/// Lines of context kept around each change.
const CONTEXT: usize = 2;
/// Largest table the minimal diff may build (lines before × lines after,
/// once the common head and tail are set aside); past it, the whole
/// changed middle is shown as removed then added.
const MAX_TABLE: usize = 1 << 20;
/// Most diff lines kept; the rest are counted.
const MAX_LINES: usize = 400;

/// One line of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line<'a> {
    text: &'a str,
    /// The line continues a secret's value begun on an earlier line.
    secret: bool,
}

/// One line of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// The changes from `old` to `new` as unified-diff lines: `@@ line N` before
/// each hunk (N counts lines of `new`), then ` ` kept, `-` removed and `+`
/// added lines. Empty when the texts have the same lines.
pub fn changes(old: &str, new: &str) -> Vec<String> {
    let before = lines(old);
    let after = lines(new);
    let ops = line_ops(&before, &after);
    hunks(&ops)
}

/// A value left open at the end of a line.
enum Open {
    Nothing,
    /// A multi-line string, until this delimiter.
    Text(&'static str),
    /// Arrays or inline tables, this many deep.
    Brackets(usize),
}

/// `text`'s lines, each marked when it continues a secret's value.
fn lines(text: &str) -> Vec<Line<'_>> {
    let mut open = Open::Nothing;
    text.lines()
        .map(|line| match open {
            Open::Text(delimiter) => {
                if line.contains(delimiter) {
                    open = Open::Nothing;
                }
                Line {
                    text: line,
                    secret: true,
                }
            }
            Open::Brackets(depth) => {
                let depth = brackets_left_open(line, depth);
                open = if depth == 0 {
                    Open::Nothing
                } else {
                    Open::Brackets(depth)
                };
                Line {
                    text: line,
                    secret: true,
                }
            }
            Open::Nothing => {
                let value = secret_value_start(line).and_then(|at| line.get(at..));
                if let Some(value) = value {
                    open = ["\"\"\"", "'''"]
                        .into_iter()
                        .find(|delimiter| value.matches(delimiter).count() % 2 == 1)
                        .map_or_else(
                            || match brackets_left_open(value, 0) {
                                0 => Open::Nothing,
                                depth => Open::Brackets(depth),
                            },
                            Open::Text,
                        );
                }
                Line {
                    text: line,
                    secret: false,
                }
            }
        })
        .collect()
}

/// How many arrays and inline tables are still open after `text`, when
/// `depth` were before it (brackets inside quoted strings do not count).
fn brackets_left_open(text: &str, mut depth: usize) -> usize {
    let mut quote = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, '#') => break,
            _ => {}
        }
    }
    depth
}

/// Every line of both texts in order, each with what happened to it.
fn line_ops<'a>(before: &[Line<'a>], after: &[Line<'a>]) -> Vec<(Op, Line<'a>)> {
    let head = before.iter().zip(after).take_while(|(a, b)| a == b).count();
    let (before_rest, after_rest) = (
        before.get(head..).unwrap_or_default(),
        after.get(head..).unwrap_or_default(),
    );
    let tail = before_rest
        .iter()
        .rev()
        .zip(after_rest.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (old_middle, common_tail) = before_rest.split_at(before_rest.len() - tail);
    let new_middle = after_rest
        .get(..after_rest.len() - tail)
        .unwrap_or_default();
    let mut ops: Vec<(Op, Line<'a>)> = before.iter().take(head).map(|l| (Op::Same, *l)).collect();
    if old_middle.len().saturating_mul(new_middle.len()) <= MAX_TABLE {
        ops.extend(minimal(old_middle, new_middle));
    } else {
        ops.extend(old_middle.iter().map(|l| (Op::Removed, *l)));
        ops.extend(new_middle.iter().map(|l| (Op::Added, *l)));
    }
    ops.extend(common_tail.iter().map(|l| (Op::Same, *l)));
    ops
}

/// A minimal diff by longest common subsequence.
fn minimal<'a>(before: &[Line<'a>], after: &[Line<'a>]) -> Vec<(Op, Line<'a>)> {
    let width = after.len() + 1;
    // lcs[i * width + j]: the longest common subsequence of before[i..] and after[j..].
    let mut lcs = vec![0u32; (before.len() + 1) * width];
    for i in (0..before.len()).rev() {
        for j in (0..after.len()).rev() {
            let value = if before.get(i) == after.get(j) {
                lcs.get((i + 1) * width + j + 1).copied().unwrap_or(0) + 1
            } else {
                let down = lcs.get((i + 1) * width + j).copied().unwrap_or(0);
                let right = lcs.get(i * width + j + 1).copied().unwrap_or(0);
                down.max(right)
            };
            if let Some(cell) = lcs.get_mut(i * width + j) {
                *cell = value;
            }
        }
    }
    let at = |i: usize, j: usize| lcs.get(i * width + j).copied().unwrap_or(0);
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(before.len() + after.len());
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(a), Some(b)) if a == b => {
                ops.push((Op::Same, *a));
                i += 1;
                j += 1;
            }
            (Some(a), Some(_)) if at(i + 1, j) >= at(i, j + 1) => {
                ops.push((Op::Removed, *a));
                i += 1;
            }
            (_, Some(b)) => {
                ops.push((Op::Added, *b));
                j += 1;
            }
            (Some(a), None) => {
                ops.push((Op::Removed, *a));
                i += 1;
            }
            (None, None) => break,
        }
    }
    ops
}

/// The changed lines with [`CONTEXT`] lines around them, grouped in hunks.
fn hunks(ops: &[(Op, Line<'_>)]) -> Vec<String> {
    let changed: Vec<usize> = (0..ops.len())
        .filter(|&i| ops.get(i).is_some_and(|(op, _)| *op != Op::Same))
        .collect();
    let near_change = |i: usize| {
        let first = changed.partition_point(|&c| c + CONTEXT < i);
        changed.get(first).is_some_and(|&c| c <= i + CONTEXT)
    };
    let mut out = Vec::new();
    let mut new_line = 0;
    let mut shown_previous = false;
    let mut omitted = 0;
    for (i, (op, line)) in ops.iter().enumerate() {
        if *op != Op::Removed {
            new_line += 1;
        }
        if !near_change(i) {
            shown_previous = false;
            continue;
        }
        if out.len() >= MAX_LINES {
            omitted += usize::from(*op != Op::Same);
            continue;
        }
        if !shown_previous {
            let at = if *op == Op::Removed {
                new_line + 1
            } else {
                new_line
            };
            out.push(format!("@@ line {at}"));
            shown_previous = true;
        }
        let sign = match op {
            Op::Same => ' ',
            Op::Removed => '-',
            Op::Added => '+',
        };
        if line.secret {
            out.push(format!("{sign}…"));
        } else {
            out.push(format!("{sign}{}", without_secret(line.text)));
        }
    }
    if omitted > 0 {
        out.push(format!("… {omitted} more changed lines"));
    }
    out
}

/// Longest diff line kept, in characters; longer ones are cut.
const MAX_LINE_CHARS: usize = 200;

/// `line` as the deploy history shows it: from the first key that names a
/// secret (`token`, `password`, `secret`, at any depth of an inline table)
/// to the end of the line replaced by `"…"`, the credentials of any URL
/// (`scheme://user:password@`) hidden, and cut to [`MAX_LINE_CHARS`].
fn without_secret(line: &str) -> String {
    let mut shown = hide_url_credentials(line);
    if let Some(value_at) = secret_value_start(&shown) {
        shown.truncate(value_at);
        shown.push_str(" \"…\"");
    }
    if shown.chars().count() > MAX_LINE_CHARS {
        shown = shown.chars().take(MAX_LINE_CHARS).collect();
        shown.push('…');
    }
    shown
}

/// Where the value of the first secret-naming key of `line` starts (just
/// after its `=`).
fn secret_value_start(line: &str) -> Option<usize> {
    line.match_indices('=').find_map(|(at, _)| {
        let key: String = line
            .get(..at)?
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '"' | '.'))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
            .to_ascii_lowercase();
        let key = key.trim_matches('"');
        let names_secret = ["token", "password", "secret"]
            .iter()
            .any(|word| key.contains(word));
        // `password-file` and `password-env` name where a secret is, not it.
        let points_elsewhere = key.ends_with("-file") || key.ends_with("-env");
        (names_secret && !points_elsewhere).then_some(at + 1)
    })
}

/// `line` with `user:password@` after every `://` replaced by `…@`.
fn hide_url_credentials(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        out.push_str(before);
        let authority_end = after
            .find(['/', '"', '\'', ' ', '?', '#'])
            .unwrap_or(after.len());
        let authority = after.get(..authority_end).unwrap_or_default();
        match authority.rfind('@') {
            Some(at) => {
                out.push('…');
                out.push_str(authority.get(at..).unwrap_or_default());
            }
            None => out.push_str(authority),
        }
        rest = after.get(authority_end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::changes;

    #[test]
    fn same_text_has_no_changes() {
        assert!(changes("a\nb\n", "a\nb\n").is_empty());
    }

    #[test]
    fn a_changed_line_shows_with_its_context_and_place() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n";
        assert_eq!(
            changes(old, new),
            ["@@ line 3", " 3", " 4", "-5", "+five", " 6", " 7"]
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\n";
        let new = "A\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        assert_eq!(
            changes(old, new),
            [
                "@@ line 1",
                "-a",
                "+A",
                " b",
                " c",
                "@@ line 8",
                " h",
                " i",
                "+j"
            ]
        );
    }

    #[test]
    fn insertions_in_the_middle_are_minimal() {
        let old = "[a]\nx = 1\n[b]\ny = 2\n";
        let new = "[a]\nx = 1\nz = 3\n[b]\ny = 2\n";
        assert_eq!(
            changes(old, new),
            ["@@ line 1", " [a]", " x = 1", "+z = 3", " [b]", " y = 2"]
        );
    }

    #[test]
    fn secrets_never_show() {
        let lines = changes(
            "token = \"old-secret\"\n",
            "token = \"new-secret\"\npassword-file = \"/run/p\"\n",
        );
        assert_eq!(
            lines,
            [
                "@@ line 1",
                "-token = \"…\"",
                "+token = \"…\"",
                "+password-file = \"/run/p\""
            ]
        );
    }

    #[test]
    fn secrets_in_inline_tables_and_urls_never_show() {
        let old = "[cluster]\nredis = \"redis://:hunter2@cache:6379/0\"\n";
        let new = "[cluster]\nredis = \"redis://alice:hunter3@cache:6379/0\"\n\
                   client-messages = [{ plugin = \"jwt@1.0.0\", config = { keys = [{ alg = \"HS256\", secret = \"k3y\" }] } }]\n\
                   admin = { token = \"t0k\" }\n";
        let shown = changes(old, new).join("\n");
        for secret in ["hunter2", "hunter3", "alice", "k3y", "t0k"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(
            shown.contains("-redis = \"redis://…@cache:6379/0\""),
            "{shown}"
        );
        assert!(
            shown.contains("{ alg = \"HS256\", secret = \"…\""),
            "{shown}"
        );
        assert!(shown.contains("+admin = { token = \"…\""), "{shown}");
    }

    #[test]
    fn secrets_written_over_several_lines_never_show() {
        let old = "[admin]\ntoken = \"\"\"\nfirst-half\nsecond-half\"\"\"\nlisten = \"a\"\n";
        let new = "[admin]\ntoken = \"\"\"\nnew-first\nnew-second\"\"\"\nlisten = \"b\"\n\
                   [[plugin.config.keys]]\nsecret = [\n  \"k1\", # [\n  { k = \"k2]\" },\n]\nafter = \"shown\"\n";
        let shown = changes(old, new).join("\n");
        for secret in [
            "first-half",
            "second-half",
            "new-first",
            "new-second",
            "k1",
            "k2",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(shown.contains("+listen = \"b\""), "{shown}");
        assert!(shown.contains("+after = \"shown\""), "{shown}");
        assert!(shown.contains("-…"), "{shown}");
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "x".repeat(1000);
        let lines = changes("", &long);
        assert_eq!(lines[1].chars().count(), 1 + super::MAX_LINE_CHARS + 1);
    }

    #[test]
    fn huge_rewrites_stay_bounded() {
        let old: String = (0..3000).map(|i| format!("old {i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("new {i}\n")).collect();
        let lines = changes(&old, &new);
        assert_eq!(lines.len(), 401);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("… 5601 more changed lines")
        );
    }
}
