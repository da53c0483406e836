//! Tokenizers ported from sacrebleu 2.6.0 (`13a`, `zh`) and rouge-score 0.1.2.
//!
//! The ports are character for character: every function here returns exactly
//! what the Python function it names returns, including its quirks (see the
//! crate documentation).

/// Python's `str.isspace()`: Unicode `White_Space` plus the four information
/// separators U+001C..U+001F, which Python also splits on.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` without arguments: split on runs of
/// [`is_py_space`] characters, dropping empty pieces.
pub fn py_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_py_space).filter(|s| !s.is_empty())
}

/// Python's `' '.join(line.split())`.
fn normalize_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in py_split(text) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out
}

/// Python's `str.rstrip()`.
pub(crate) fn py_rstrip(text: &str) -> &str {
    text.trim_end_matches(is_py_space)
}

/// Python's `str.strip()`.
fn py_strip(text: &str) -> &str {
    text.trim_matches(is_py_space)
}

/// The punctuation class of sacrebleu's first regex,
/// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`.
fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies `re.sub(r'(A)(B)', repl, text)` for a two-character pattern:
/// leftmost, non-overlapping matches, scanned left to right as Python does.
fn sub_pairs(
    chars: &[char],
    first: impl Fn(char) -> bool,
    second: impl Fn(char) -> bool,
    emit: impl Fn(&mut Vec<char>, char, char),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && first(chars[i]) && second(chars[i + 1]) {
            emit(&mut out, chars[i], chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's `TokenizerRegexp` (the shared post-tokenizer of `13a` and `zh`).
fn regexp_post_tokenize(line: &str) -> String {
    // 1. ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
    let mut chars: Vec<char> = Vec::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_13a_punct(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    let is_digit = |c: char| c.is_ascii_digit();
    let is_period_comma = |c: char| c == '.' || c == ',';
    // 2. tokenize period and comma unless preceded by a digit: ([^0-9])([\.,]) -> '\1 \2 '
    let chars = sub_pairs(
        &chars,
        |c| !is_digit(c),
        is_period_comma,
        |out, a, b| out.extend([a, ' ', b, ' ']),
    );
    // 3. tokenize period and comma unless followed by a digit: ([\.,])([^0-9]) -> ' \1 \2'
    let chars = sub_pairs(
        &chars,
        is_period_comma,
        |c| !is_digit(c),
        |out, a, b| out.extend([' ', a, ' ', b]),
    );
    // 4. tokenize dash when preceded by a digit: ([0-9])(-) -> '\1 \2 '
    let chars = sub_pairs(
        &chars,
        is_digit,
        |c| c == '-',
        |out, a, b| out.extend([a, ' ', b, ' ']),
    );
    let text: String = chars.into_iter().collect();
    normalize_spaces(&text)
}

/// sacrebleu's `Tokenizer13a.__call__` (mteval-v13a): drops `<skipped>`,
/// joins `-\n` line breaks, turns newlines into spaces, unescapes `&quot;`,
/// `&amp;`, `&lt;` and `&gt;`, then splits off ASCII punctuation (periods
/// and commas only when not next to a digit, dashes only after a digit).
/// Returns the tokens joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "");
    line = line.replace("-\n", "");
    line = line.replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"");
        line = line.replace("&amp;", "&");
        line = line.replace("&lt;", "<");
        line = line.replace("&gt;", ">");
    }
    regexp_post_tokenize(&format!(" {line} "))
}

/// The code points that sacrebleu 2.6.0's `TokenizerZh._is_chinese_char`
/// accepts, as closed ranges.
///
/// sacrebleu lists its ranges as Python strings such as `u'\u20000'`, which
/// Python reads as the two characters U+2000 and `0`; compared with one
/// character, the range (`'\u20000'`, `'\u2a6d6'`) therefore accepts
/// U+2001..=U+2A6D (general punctuation, letter-like symbols, arrows, maths
/// operators, enclosed numbers, box drawing, dingbats, ...), and the
/// supplementary-plane ranges it meant (CJK Extension B, compatibility
/// supplement) accept nothing outside the BMP. This table is what the code
/// does, not what its comments say.
pub const ZH_CHINESE_RANGES: &[(u32, u32)] = &[
    (0x2001, 0x2A6D),
    (0x2E80, 0x2FDF),
    (0x2FF0, 0x303F),
    (0x3100, 0x312F),
    (0x31A0, 0x31EF),
    (0x3200, 0x4DB5),
    (0x4E00, 0x9FBB),
    (0xF900, 0xFA2D),
    (0xFA30, 0xFA6A),
    (0xFA70, 0xFAD9),
    (0xFE10, 0xFE1F),
    (0xFE30, 0xFE4F),
    (0xFF00, 0xFFEF),
];

/// Whether sacrebleu's `zh` tokenizer puts spaces around `c`
/// (see [`ZH_CHINESE_RANGES`]).
pub fn is_zh_chinese_char(c: char) -> bool {
    let cp = c as u32;
    ZH_CHINESE_RANGES
        .iter()
        .any(|&(start, end)| start <= cp && cp <= end)
}

/// sacrebleu's `TokenizerZh.__call__`: strips the line, surrounds every
/// character of [`ZH_CHINESE_RANGES`] with spaces, then applies the same
/// punctuation regexes as `13a` (but without its HTML unescaping, `<skipped>`
/// removal or padding, so a period at the very end of the line stays attached
/// to a preceding digit). Returns the tokens joined by single spaces.
pub fn tokenize_zh(line: &str) -> String {
    let line = py_strip(line);
    let mut spaced = String::with_capacity(line.len() * 3);
    for c in line.chars() {
        if is_zh_chinese_char(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    regexp_post_tokenize(&spaced)
}

/// rouge-score's default tokenizer (`tokenize.tokenize` without a stemmer):
/// lowercase, then keep the runs of ASCII `[a-z0-9]`; everything else,
/// including every Chinese character, separates tokens and is dropped.
pub fn tokenize_rouge_default(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One token per character that is not whitespace (Python `str.isspace`);
/// the Chinese ROUGE default. Nothing is lowercased or dropped.
pub fn tokenize_chars(text: &str) -> Vec<String> {
    text.chars()
        .filter(|&c| !is_py_space(c))
        .map(String::from)
        .collect()
}

/// Chinese word segmentation with jieba (default dictionary, HMM on), as
/// Python jieba 0.42.1's `jieba.cut(text)`; words made only of whitespace
/// are dropped.
///
/// jieba-rs 0.11 keeps runs such as `TI-RADS`, `v1_2` or `1.2.3` whole in
/// its HMM step, where Python's `finalseg` splits them with
/// `[a-zA-Z0-9]+(?:\.\d+)?%?` (`TI`, `-`, `RADS`); such words are split
/// again here the Python way. (No word of jieba's dictionary has an inner
/// `.`, `_` or `-`, so dictionary words are not affected.)
#[cfg(feature = "jieba")]
pub fn tokenize_jieba(text: &str) -> Vec<String> {
    use std::sync::OnceLock;
    static JIEBA: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    let jieba = JIEBA.get_or_init(jieba_rs::Jieba::new);
    let mut words = Vec::new();
    for token in jieba.cut(text, true) {
        let word = token.word;
        if py_strip(word).is_empty() {
            continue;
        }
        let latin_run = word.starts_with(|c: char| c.is_ascii_alphanumeric())
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '%'));
        if latin_run {
            words.extend(python_finalseg_skip_split(word).map(str::to_owned));
        } else {
            words.push(word.to_owned());
        }
    }
    words
}

/// Python jieba's `finalseg` split of an ASCII run: the matches of
/// `[a-zA-Z0-9]+(?:\.\d+)?%?` and the gaps between them, in order.
#[cfg(feature = "jieba")]
fn python_finalseg_skip_split(run: &str) -> impl Iterator<Item = &str> {
    let bytes = run.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        if bytes[pos].is_ascii_alphanumeric() {
            while pos < bytes.len() && bytes[pos].is_ascii_alphanumeric() {
                pos += 1;
            }
            if pos + 1 < bytes.len() && bytes[pos] == b'.' && bytes[pos + 1].is_ascii_digit() {
                pos += 1;
                while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                    pos += 1;
                }
            }
            if pos < bytes.len() && bytes[pos] == b'%' {
                pos += 1;
            }
        } else {
            while pos < bytes.len() && !bytes[pos].is_ascii_alphanumeric() {
                pos += 1;
            }
        }
        // Every byte of `run` is ASCII, so any index is a char boundary.
        run.get(start..pos)
    })
}
