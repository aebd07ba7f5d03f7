/// Shell-style wildcard match: `*` any run of characters, `?` one character; everything else
/// literally. Used by policy rules (table globs) and masking rules (column globs).
///
/// ```
/// use portcullis_core::wildcard;
/// assert!(wildcard("billing.*", "billing.invoices"));
/// assert!(wildcard("a?c*", "abcdef"));
/// assert!(!wildcard("billing.*", "billingx"));
/// ```
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken: one backtrack point is
    // enough for `*`-only patterns.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
