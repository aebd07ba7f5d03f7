//! What a `COPY … TO STDOUT` sends, as a query that can be described: binary COPY output
//! carries no column types, so a masking layer can read it only once the gateway has described
//! the same columns (`Catalog::describe`).
//!
//! Only the two plain forms are read — `COPY (query) TO STDOUT …` and
//! `COPY table [(columns)] TO STDOUT …`; anything else gives `None`, and binary output is
//! then refused rather than guessed at.

/// One plain `COPY … TO STDOUT` statement: a query with the same columns, and the layout of
/// its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyOut {
    /// A `SELECT` whose result has the columns the statement copies out.
    pub(crate) select: String,
    /// How the rows are written.
    pub(crate) layout: portcullis_core::CopyLayout,
}

/// What `sql` copies out, when it is one plain `COPY … TO STDOUT` statement.
pub(crate) fn copy_out(sql: &str) -> Option<CopyOut> {
    let (select, options) = describe_sql(sql)?;
    Some(CopyOut {
        select,
        layout: layout(options),
    })
}

/// The row layout the options after `TO STDOUT` ask for (new-style `WITH (…)` or old-style).
fn layout(options: &str) -> portcullis_core::CopyLayout {
    use portcullis_core::CopyLayout;
    let options = options.to_ascii_lowercase();
    let has = |word: &str| {
        options
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == word)
    };
    if has("binary") {
        return CopyLayout::Binary;
    }
    if [
        "delimiter",
        "null",
        "quote",
        "escape",
        "force_quote",
        "force_not_null",
        "force_null",
        "encoding",
        "default",
    ]
    .iter()
    .any(|o| has(o))
    {
        return CopyLayout::Custom;
    }
    let header = has("header");
    if has("csv") {
        CopyLayout::Csv { header }
    } else {
        CopyLayout::Text { header }
    }
}

/// The `SELECT` whose result has the columns `sql` copies out, and the options after
/// `STDOUT`, when `sql` is one plain `COPY … TO STDOUT` statement.
fn describe_sql(sql: &str) -> Option<(String, &str)> {
    let rest = keyword(sql.trim_start(), "copy")?.trim_start();
    let (select, rest) = if rest.starts_with('(') {
        let end = closing_paren(rest)?;
        (rest[1..end].trim().to_owned(), &rest[end + 1..])
    } else {
        let (table, rest) = relation(rest)?;
        let rest = rest.trim_start();
        let (list, rest) = if rest.starts_with('(') {
            let end = closing_paren(rest)?;
            (rest[1..end].trim(), &rest[end + 1..])
        } else {
            ("*", rest)
        };
        if list.is_empty() {
            return None;
        }
        (format!("select {list} from {table}"), rest)
    };
    let rest = keyword(rest.trim_start(), "to")?;
    let options = keyword(rest.trim_start(), "stdout")?;
    Some((select, options))
}

/// `text` after a leading case-insensitive `word` followed by a non-identifier character.
fn keyword<'t>(text: &'t str, word: &str) -> Option<&'t str> {
    let head = text.get(..word.len())?;
    let rest = &text[word.len()..];
    let boundary = rest
        .chars()
        .next()
        .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'));
    (head.eq_ignore_ascii_case(word) && boundary).then_some(rest)
}

/// A possibly schema-qualified, possibly quoted table name at the start of `text`, and what
/// follows it.
fn relation(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let mut end = 0;
    let bytes = text.as_bytes();
    loop {
        if bytes.get(end) == Some(&b'"') {
            // A quoted identifier: `""` is a quote inside it.
            end += 1;
            loop {
                match bytes.get(end)? {
                    b'"' if bytes.get(end + 1) == Some(&b'"') => end += 2,
                    b'"' => {
                        end += 1;
                        break;
                    }
                    _ => end += 1,
                }
            }
        } else {
            let start = end;
            while bytes.get(end).is_some_and(|b| {
                b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80
            }) {
                end += 1;
            }
            if end == start {
                return None;
            }
        }
        if bytes.get(end) == Some(&b'.') {
            end += 1;
            continue;
        }
        break;
    }
    Some((&text[..end], &text[end..]))
}

/// The index of the `)` closing the `(` at the start of `text`, skipping strings, quoted
/// identifiers, dollar-quoted strings and comments.
fn closing_paren(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            q @ (b'\'' | b'"') => {
                i += 1;
                loop {
                    match bytes.get(i)? {
                        c if *c == q && bytes.get(i + 1) == Some(&q) => i += 2,
                        c if *c == q => break,
                        // E'…' strings escape quotes with a backslash too.
                        b'\\' if q == b'\'' => i += 2,
                        _ => i += 1,
                    }
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while bytes.get(i).is_some_and(|b| *b != b'\n') {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while !(bytes.get(i)? == &b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ … $tag$ (a `$1` parameter has a digit and no closing `$`).
                let tag_end = text[i + 1..].find('$').map(|n| i + 1 + n)?;
                let tag = &text[i..=tag_end];
                if tag[1..tag.len() - 1]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !tag.as_bytes().get(1).is_some_and(u8::is_ascii_digit)
                {
                    let close = text[tag_end + 1..].find(tag)?;
                    i = tag_end + close + tag.len();
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_copies_are_read() {
        for (sql, want) in [
            ("COPY customers TO STDOUT", "select * from customers"),
            (
                "copy public.customers (email, card) to stdout with (format binary)",
                "select email, card from public.customers",
            ),
            (
                r#"copy "My Schema"."Odd ""t""" to stdout (format binary)"#,
                r#"select * from "My Schema"."Odd ""t""""#,
            ),
            (
                "copy (select email from customers where note = ')' or x = $$)$$) to stdout (format binary)",
                "select email from customers where note = ')' or x = $$)$$",
            ),
            (
                "copy (select id, name, email, card, ssn, card_num from customers order by id) to stdout (format binary)",
                "select id, name, email, card, ssn, card_num from customers order by id",
            ),
            (
                "  Copy (select 1 /* ) */ -- )\n, 2) TO STDOUT",
                "select 1 /* ) */ -- )\n, 2",
            ),
        ] {
            assert_eq!(
                describe_sql(sql).map(|d| d.0).as_deref(),
                Some(want),
                "{sql}"
            );
        }
    }

    #[test]
    fn anything_else_is_not() {
        for sql in [
            "copy customers from stdin",
            "copy customers to '/tmp/x'",
            "copy (select 1 to stdout",
            "copyx t to stdout",
            "select 1",
            "copy t () to stdout",
            "copy to stdout",
            "",
        ] {
            assert_eq!(describe_sql(sql), None, "{sql}");
        }
    }

    #[test]
    fn layouts() {
        use portcullis_core::CopyLayout;
        for (sql, want) in [
            ("copy t to stdout", CopyLayout::Text { header: false }),
            (
                "copy t to stdout with (format text, header)",
                CopyLayout::Text { header: true },
            ),
            (
                "copy t to stdout csv header",
                CopyLayout::Csv { header: true },
            ),
            (
                "copy t to stdout with (format csv)",
                CopyLayout::Csv { header: false },
            ),
            ("copy t to stdout (format binary)", CopyLayout::Binary),
            ("copy t to stdout binary", CopyLayout::Binary),
            (
                "copy t to stdout with (format csv, delimiter ';')",
                CopyLayout::Custom,
            ),
            ("copy t to stdout with null 'x'", CopyLayout::Custom),
        ] {
            assert_eq!(copy_out(sql).map(|c| c.layout), Some(want), "{sql}");
        }
    }
}
