//! Limits on manifest text, checked before a YAML or JSON parser sees it.
//!
//! libyaml (under `serde_yaml`) spends time proportional to the nesting depth on every token
//! of a flow collection, so a file of deeply nested `[` or `{a: ` takes quadratic time: 160 KB
//! of `{a: ` takes over 30 s. `serde_yaml`'s own recursion limit (128) only applies after the
//! whole document has been read, too late to help. [`check_nesting`] is a linear pre-scan that
//! rejects such text before the parser runs.
//!
//! The pre-scan mirrors libyaml's tokenizer where nesting happens (flow collections, quoted
//! scalars, comments) and approximates block scalars and multi-line plain scalars. It errs on
//! the side of counting: a bracket inside text it skips (a quoted or plain scalar, a comment, a
//! block scalar) still counts when the skipped text opens more brackets than it closes, so text
//! it takes for a scalar but the parser does not cannot hide nesting. A real file can only be
//! refused if it holds more than [`MAX_NESTING`] unbalanced brackets inside strings or
//! comments.

use serde_json::Value;

/// Deepest nesting of collections a manifest may have.
pub const MAX_NESTING: usize = 64;

/// Largest manifest file read, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why manifest text is refused before parsing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("line {line}: collections nested more than {limit} deep")]
    TooDeep { line: usize, limit: usize },
}

/// Checks that YAML (or JSON, which is YAML) text nests collections at most `limit` deep,
/// counting flow collections (`[`, `{`). Linear in the length of the text.
///
/// Block collections (indentation) are not counted: libyaml handles them in linear time and
/// `serde_yaml` stops at 128 levels; [`value_depth`] checks the parsed result.
pub fn check_nesting(text: &str, limit: usize) -> Result<(), LimitError> {
    let mut s = Scan {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        line_start: 0,
        flow: 0,
        extra: 0,
        limit,
        max: 0,
    };
    s.block()
}

/// The deepest flow nesting [`check_nesting`] counts in `text` (an upper bound of what the
/// YAML parser would reach).
pub fn flow_nesting(text: &str) -> usize {
    let mut s = Scan {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        line_start: 0,
        flow: 0,
        extra: 0,
        limit: usize::MAX,
        max: 0,
    };
    let _ = s.block();
    s.max
}

/// The nesting depth of a parsed value (a scalar is 0, `[]` is 1).
pub fn value_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
    line_start: usize,
    /// Flow collections open, as the parser counts them.
    flow: usize,
    /// Brackets opened in skipped text and not closed there (see the module docs).
    extra: usize,
    limit: usize,
    /// The deepest count reached.
    max: usize,
}

fn blankz(c: u8) -> bool {
    matches!(c, 0 | b' ' | b'\t' | b'\r' | b'\n')
}

impl Scan<'_> {
    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    fn col(&self) -> usize {
        self.i - self.line_start
    }

    fn newline(&mut self) {
        self.i += 1;
        self.line += 1;
        self.line_start = self.i;
    }

    fn check(&mut self, more: usize) -> Result<(), LimitError> {
        let depth = self.flow + self.extra + more;
        self.max = self.max.max(depth);
        if depth > self.limit {
            return Err(LimitError::TooDeep {
                line: self.line,
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), LimitError> {
        self.flow += 1;
        self.i += 1;
        self.check(0)
    }

    /// Counts a bracket inside skipped text; `local` is what that text has left open so far.
    fn text_bracket(&mut self, c: u8, local: &mut usize) -> Result<(), LimitError> {
        match c {
            b'[' | b'{' => {
                *local += 1;
                self.check(*local)
            }
            b']' | b'}' => {
                *local = local.saturating_sub(1);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn is_document_marker(&self) -> bool {
        self.col() == 0
            && (self.b[self.i..].starts_with(b"---") || self.b[self.i..].starts_with(b"..."))
            && blankz(self.at(3))
    }

    /// Block context: scans tokens until the end of the text.
    fn block(&mut self) -> Result<(), LimitError> {
        // Column of the innermost block node on this line (for block scalar indentation), and
        // whether only `- ` / `? ` indicators came before on this line.
        let mut node_col: Option<usize> = None;
        let mut only_indicators = true;
        while self.i < self.b.len() {
            let c = self.b[self.i];
            match c {
                b'\n' => {
                    self.newline();
                    node_col = None;
                    only_indicators = true;
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            let col = self.col();
            if self.is_document_marker() {
                self.i += 3;
                continue;
            }
            match c {
                b'%' if col == 0 => self.skip_line()?,
                b'#' => self.skip_line()?,
                b'-' | b'?' if blankz(self.at(1)) => {
                    node_col = Some(col);
                    self.i += 1;
                }
                b':' if blankz(self.at(1)) => {
                    only_indicators = false;
                    self.i += 1;
                }
                b'|' | b'>' => {
                    let parent = node_col.unwrap_or_else(|| col.saturating_sub(1));
                    self.block_scalar(parent)?;
                }
                _ => {
                    if only_indicators {
                        node_col = Some(col);
                        only_indicators = false;
                    }
                    match c {
                        b'[' | b'{' => {
                            self.open()?;
                            self.flow_context()?;
                        }
                        b']' | b'}' => self.i += 1,
                        b'\'' => self.single_quoted()?,
                        b'"' => self.double_quoted()?,
                        b'&' | b'*' | b'!' => self.property()?,
                        _ => self.plain_block()?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Skips to the end of the line (a comment, a directive).
    fn skip_line(&mut self) -> Result<(), LimitError> {
        let mut local = 0;
        while self.i < self.b.len() && self.b[self.i] != b'\n' {
            let c = self.b[self.i];
            self.text_bracket(c, &mut local)?;
            self.i += 1;
        }
        self.extra += local;
        Ok(())
    }

    /// An anchor, alias or tag: up to the next blank.
    fn property(&mut self) -> Result<(), LimitError> {
        let mut local = 0;
        while !blankz(self.at(0)) {
            let c = self.b[self.i];
            if self.flow > 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}') {
                break;
            }
            self.text_bracket(c, &mut local)?;
            self.i += 1;
        }
        self.extra += local;
        Ok(())
    }

    fn single_quoted(&mut self) -> Result<(), LimitError> {
        self.i += 1;
        let mut local = 0;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\'' if self.at(1) == b'\'' => self.i += 2,
                b'\'' => {
                    self.i += 1;
                    break;
                }
                b'\n' => self.newline(),
                c => {
                    self.text_bracket(c, &mut local)?;
                    self.i += 1;
                }
            }
        }
        self.extra += local;
        Ok(())
    }

    fn double_quoted(&mut self) -> Result<(), LimitError> {
        self.i += 1;
        let mut local = 0;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => {
                    self.i += 1;
                    if self.at(0) == b'\n' {
                        self.newline();
                    } else if self.i < self.b.len() {
                        self.i += 1;
                    }
                }
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\n' => self.newline(),
                c => {
                    self.text_bracket(c, &mut local)?;
                    self.i += 1;
                }
            }
        }
        self.extra += local;
        Ok(())
    }

    /// A plain scalar in block context: up to `: `, ` #` or the end of the line.
    fn plain_block(&mut self) -> Result<(), LimitError> {
        let mut local = 0;
        while self.i < self.b.len() {
            let c = self.b[self.i];
            if c == b'\n' || (c == b':' && blankz(self.at(1))) {
                break;
            }
            if matches!(c, b' ' | b'\t') && self.at(1) == b'#' {
                break;
            }
            self.text_bracket(c, &mut local)?;
            self.i += 1;
        }
        self.extra += local;
        Ok(())
    }

    /// A block scalar (`|`, `>`): the header line, then every line indented more than
    /// `parent` (the indentation of the first content line sets the scalar's indentation).
    fn block_scalar(&mut self, parent: usize) -> Result<(), LimitError> {
        self.skip_line()?;
        let mut local = 0;
        let mut content: Option<usize> = None;
        while self.i < self.b.len() {
            // self.i is at a line break.
            let start = self.i + 1;
            let mut j = start;
            while j < self.b.len() && self.b[j] == b' ' {
                j += 1;
            }
            let indent = j - start;
            let empty = j >= self.b.len() || matches!(self.b[j], b'\n' | b'\r');
            if !empty {
                let min = content.unwrap_or(parent + 1);
                if indent < min {
                    break;
                }
                content.get_or_insert(indent);
            }
            self.newline();
            while self.i < self.b.len() && self.b[self.i] != b'\n' {
                let c = self.b[self.i];
                self.text_bracket(c, &mut local)?;
                self.i += 1;
            }
        }
        self.extra += local;
        Ok(())
    }

    /// Inside a flow collection (just opened): scans until it closes.
    fn flow_context(&mut self) -> Result<(), LimitError> {
        let depth = self.flow - 1;
        while self.i < self.b.len() && self.flow > depth {
            let c = self.b[self.i];
            match c {
                b'\n' => {
                    self.newline();
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    self.i += 1;
                    continue;
                }
                _ => {}
            }
            if self.is_document_marker() {
                self.i += 3;
                continue;
            }
            match c {
                b'#' => self.skip_line()?,
                b'[' | b'{' => self.open()?,
                b']' | b'}' => {
                    self.flow -= 1;
                    self.i += 1;
                }
                b',' | b'?' | b':' => self.i += 1,
                b'-' if blankz(self.at(1)) => self.i += 1,
                b'\'' => self.single_quoted()?,
                b'"' => self.double_quoted()?,
                b'&' | b'*' | b'!' => self.property()?,
                _ => self.plain_flow(),
            }
        }
        Ok(())
    }

    /// A plain scalar in flow context: up to a flow indicator, `: `, or a comment; it may span
    /// lines. It cannot hold a bracket (the bracket ends it).
    fn plain_flow(&mut self) {
        self.i += 1;
        while self.i < self.b.len() {
            let c = self.b[self.i];
            match c {
                b',' | b'[' | b']' | b'{' | b'}' => return,
                b':' if blankz(self.at(1))
                    || matches!(self.at(1), b',' | b'[' | b']' | b'{' | b'}') =>
                {
                    return
                }
                b'\n' => {
                    self.newline();
                    if self.is_document_marker() {
                        return;
                    }
                }
                b' ' | b'\t' | b'\r' => {
                    self.i += 1;
                    // A comment ends the scalar; so does whitespace before a line that starts
                    // with one (checked on the next round).
                    if self.at(0) == b'#' {
                        return;
                    }
                }
                _ => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, limit: usize) -> bool {
        check_nesting(text, limit).is_ok()
    }

    #[test]
    fn deep_flow_collections_are_refused_quickly() {
        for text in [
            "[".repeat(120_000),
            "{a: ".repeat(40_000),
            "[{".repeat(50_000),
        ] {
            let start = std::time::Instant::now();
            let err = check_nesting(&text, MAX_NESTING).unwrap_err();
            assert_eq!(
                err,
                LimitError::TooDeep {
                    line: 1,
                    limit: MAX_NESTING
                }
            );
            // Linear: far below the tens of seconds the parser would take.
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
        }
        let json = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert!(!depth_ok(&json, 64));
        let json = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(depth_ok(&json, 64));
    }

    #[test]
    fn ordinary_manifests_pass() {
        let text = r#"
# a comment with [ and {
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: routes, namespace: "demo", annotations: {"a": "[["}}
spec:
  matches:
  - name: api
    pathRegex: /api/[a-z]+/[0-9]{1,3}
    methods: [GET, "POST"]
    headers: [{x-user: '^admin [x$'}]
  - name: script
    pathRegex: |
      /[[[[[[[[[[
      {{{{{{{{{{
---
kind: List
items: [{a: [1, [2, [3]]]}, {b: "]]]"}]
"#;
        // Every bracket above is either balanced or in a string or comment that the limit
        // tolerates: 10 unbalanced brackets in a block scalar count, no more.
        assert!(depth_ok(text, 64));
        assert!(!depth_ok(text, 12));
        let many: String = (0..10_000)
            .map(|i| format!("- {{name: p{i}, ports: [{{containerPort: 80}}]}}\n"))
            .collect();
        assert!(depth_ok(&many, 4));
    }

    #[test]
    fn text_that_only_looks_like_a_string_cannot_hide_nesting() {
        // A close inside a real string does not count; an open inside anything counts.
        let deep = "[".repeat(100);
        for text in [
            format!("a: \"]]]]]\" {deep}"),
            format!("a: x 'y\nb: {deep}"),
            format!("a: |\n  '\nb: {deep}"),
            format!("# ]]]]\n{deep}"),
            format!("[\"]]]\", {deep}"),
        ] {
            assert!(!depth_ok(&text, 64), "{text:.40}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Whatever libyaml makes of text without block collections (no `-`, `?`, `:`), the
        /// pre-scan never counts less nesting than the parsed documents have.
        #[test]
        fn the_pre_scan_never_undercounts_what_the_parser_reads(
            text in "[\\[\\]{}'\" #,|>!&*a\\\\\n]{0,40}"
        ) {
            use serde::Deserialize;
            let counted = flow_nesting(&text);
            for doc in serde_yaml::Deserializer::from_str(&text) {
                match Value::deserialize(doc) {
                    Ok(v) => proptest::prop_assert!(
                        value_depth(&v) <= counted,
                        "{text:?}: parsed depth {} > counted {counted}", value_depth(&v)
                    ),
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn value_depth_counts_collections() {
        assert_eq!(value_depth(&serde_json::json!(1)), 0);
        assert_eq!(value_depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
    }
}
