//! Maps a key path of the merged configuration back to the file and line that set it.

use std::path::{Path, PathBuf};

use figment::value::{Tag, Value};
use figment::{Figment, Source};
use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike};

/// One parsed layer file, kept to turn key paths into line numbers.
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// Present for TOML files; JSONC files are located by file only.
    pub toml: Option<ImDocument<String>>,
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Where a key path was set: the file (from figment's metadata) and the line (from the TOML spans).
pub(crate) fn locate(
    figment: &Figment,
    sources: &[SourceFile],
    segments: &[String],
) -> (Option<PathBuf>, Option<usize>) {
    let Ok(root) = figment.find_value("") else {
        return (None, None);
    };
    // Walk the merged value, remembering the deepest tag and per-file array indices.
    let mut value = &root;
    let mut tag: Option<Tag> = None;
    let mut local: Vec<String> = Vec::new();
    for seg in segments {
        let next = match value {
            Value::Dict(_, d) => d.get(seg.as_str()).map(|v| (v, seg.clone())),
            Value::Array(_, items) => seg.parse::<usize>().ok().and_then(|i| {
                let item = items.get(i)?;
                // Arrays are concatenated across files: index within the item's own file.
                let same = items[..i].iter().filter(|x| x.tag() == item.tag()).count();
                Some((item, same.to_string()))
            }),
            _ => None,
        };
        match next {
            Some((v, local_seg)) => {
                value = v;
                tag = Some(v.tag());
                local.push(local_seg);
            }
            None => {
                local.push(seg.clone());
                break;
            }
        }
    }
    let file = tag
        .and_then(|t| figment.get_metadata(t))
        .and_then(|m| m.source.as_ref())
        .and_then(|s| match s {
            Source::File(p) => Some(p.clone()),
            _ => None,
        });
    let Some(file) = file else {
        return (None, None);
    };
    let line = sources
        .iter()
        .find(|s| same_path(&s.path, &file))
        .and_then(|s| toml_line(s, &local));
    (Some(file), line)
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || a.canonicalize().ok() == b.canonicalize().ok()
}

fn toml_line(src: &SourceFile, segments: &[String]) -> Option<usize> {
    let doc = src.toml.as_ref()?;
    span_in(doc.as_table(), segments).map(|r| line_of(&src.text, r.start))
}

/// The span of the deepest key of `segs` that exists under `t`.
fn span_in(t: &dyn TableLike, segs: &[String]) -> Option<Range<usize>> {
    let (first, rest) = segs.split_first()?;
    let (key, item) = t.get_key_value(first)?;
    let here = key.span().or_else(|| item.span());
    let deeper = match item {
        Item::ArrayOfTables(a) => rest.split_first().and_then(|(idx, rest)| {
            let tbl = a.get(idx.parse().ok()?)?;
            span_in(tbl, rest).or_else(|| tbl.span())
        }),
        Item::Table(tbl) => span_in(tbl, rest),
        Item::Value(toml_edit::Value::InlineTable(it)) => span_in(it, rest),
        Item::Value(toml_edit::Value::Array(arr)) => rest.split_first().and_then(|(idx, rest)| {
            let v = arr.get(idx.parse().ok()?)?;
            match v {
                toml_edit::Value::InlineTable(it) => span_in(it, rest).or_else(|| v.span()),
                _ => v.span(),
            }
        }),
        _ => None,
    };
    deeper.or(here)
}
