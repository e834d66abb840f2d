//! Helpers for reading harness files written as Markdown with YAML frontmatter (agents, skills).

/// The frontmatter of a Markdown file (the text between the leading `---` line and the next
/// `---` line) and the 1-based line its first line has in the file. `None` when there is none.
pub fn frontmatter(text: &str) -> Option<(&str, usize)> {
    let rest = text.strip_prefix("---")?;
    let rest = rest
        .strip_prefix("\r\n")
        .or_else(|| rest.strip_prefix('\n'))?;
    let end = rest.match_indices("\n---").map(|(i, _)| i).find(|i| {
        let after = &rest[i + 4..];
        after.is_empty() || after.starts_with('\n') || after.starts_with("\r\n")
    })?;
    Some((&rest[..end + 1], 2))
}

/// The `key: value` lines of a flat frontmatter block (no nesting, no lists), in order. Lines
/// without a colon are skipped; surrounding quotes of a value are removed.
pub fn flat_fields(frontmatter: &str) -> Vec<(String, String)> {
    frontmatter
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// The first `line N` a parser's error message mentions, if any.
pub fn line_in_message(msg: &str) -> Option<usize> {
    let i = msg.find("line ")?;
    msg[i + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frontmatter() {
        assert_eq!(
            frontmatter("---\nname: a\n---\nbody"),
            Some(("name: a\n", 2))
        );
        assert_eq!(
            frontmatter("---\r\nname: a\n---\r\nbody"),
            Some(("name: a\n", 2))
        );
        assert_eq!(frontmatter("no front"), None);
        assert_eq!(frontmatter("---\nname: a\n"), None);
        assert_eq!(line_in_message("bad at line 3 column 2"), Some(3));
        assert_eq!(
            flat_fields("name: a\ndescription: \"b: c\"\nnoise\n"),
            [
                ("name".into(), "a".into()),
                ("description".into(), "b: c".into())
            ]
        );
    }
}
