//! What a deploy changed: a line diff of the serving configuration's text
//! against the deployed one, for the deploy history. Values of keys that
//! name secrets (`token`, `password`, `secret`) are never shown.

/// Lines of context kept around each change.
const CONTEXT: usize = 2;
/// Largest table the minimal diff may build (lines before × lines after,
/// once the common head and tail are set aside); past it, the whole
/// changed middle is shown as removed then added.
const MAX_TABLE: usize = 1 << 20;
/// Most diff lines kept; the rest are counted.
const MAX_LINES: usize = 400;

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
    let before: Vec<&str> = old.lines().collect();
    let after: Vec<&str> = new.lines().collect();
    let ops = line_ops(&before, &after);
    hunks(&ops)
}

/// Every line of both texts in order, each with what happened to it.
fn line_ops<'a>(before: &[&'a str], after: &[&'a str]) -> Vec<(Op, &'a str)> {
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
    let mut ops: Vec<(Op, &str)> = before.iter().take(head).map(|l| (Op::Same, *l)).collect();
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
fn minimal<'a>(before: &[&'a str], after: &[&'a str]) -> Vec<(Op, &'a str)> {
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
fn hunks(ops: &[(Op, &str)]) -> Vec<String> {
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
        out.push(format!("{sign}{}", without_secret(line)));
    }
    if omitted > 0 {
        out.push(format!("… {omitted} more changed lines"));
    }
    out
}

/// `line` with the value of a secret-naming key replaced by `"…"`.
fn without_secret(line: &str) -> String {
    let Some((key, _)) = line.split_once('=') else {
        return line.to_string();
    };
    let lower = key.to_ascii_lowercase();
    let secret = ["token", "password", "secret"]
        .iter()
        .any(|word| lower.contains(word))
        // `password-file` and `password-env` name where a secret is, not it.
        && !lower.trim_end().ends_with("-file")
        && !lower.trim_end().ends_with("-env");
    if secret {
        format!("{key}= \"…\"")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
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
