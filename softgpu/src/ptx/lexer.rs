//! Tokens of PTX text, each with its line and byte span (the span gives error messages
//! the instruction's own text).

use super::PtxError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok<'a> {
    /// Identifiers, directives (`.reg`), registers (`%r1`, `%tid.x`), labels (`$L__BB0_3`),
    /// dotted opcodes (`ld.global.nc.f32`).
    Word(&'a str),
    /// A numeric literal as written: `16`, `0x1F`, `0f3F800000`, `0d3FF0000000000000`, `9.0`.
    Num(&'a str),
    Str(&'a str),
    Punct(char),
}

#[derive(Debug, Clone, Copy)]
pub struct Token<'a> {
    pub tok: Tok<'a>,
    pub line: u32,
    pub start: usize,
    pub end: usize,
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.')
}

pub fn tokenize(text: &str) -> Result<Vec<Token<'_>>, PtxError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len() / 4);
    let mut i = 0;
    let mut line = 1u32;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b'\n' => {
                line += 1;
                i += 1;
                continue;
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\n' {
                        return Err(PtxError { line, message: "unterminated string".into() });
                    }
                    i += 1;
                }
                i += 1;
                out.push(Token { tok: Tok::Str(&text[start + 1..i - 1]), line, start, end: i });
                continue;
            }
            c if c.is_ascii_digit() => {
                // Hex float literals (`0f…`, `0d…`) and hex integers are one token; a
                // decimal may carry a fraction (`.version 9.0`).
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                out.push(Token { tok: Tok::Num(&text[start..i]), line, start, end: i });
                continue;
            }
            c if is_word_start(c) => {
                i += 1;
                while i < bytes.len() && is_word_char(bytes[i]) {
                    i += 1;
                }
                out.push(Token { tok: Tok::Word(&text[start..i]), line, start, end: i });
                continue;
            }
            b',' | b';' | b':' | b'[' | b']' | b'{' | b'}' | b'(' | b')' | b'<' | b'>' | b'+' | b'-'
            | b'@' | b'!' | b'|' => {
                i += 1;
                out.push(Token { tok: Tok::Punct(c as char), line, start, end: i });
                continue;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(PtxError { line, message: format!("unexpected character `{ch}`") });
            }
        }
    }
    Ok(out)
}
