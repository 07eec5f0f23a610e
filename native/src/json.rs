//! A strict JSON checker that accepts exactly what `orjson.loads` accepts (RFC 8259; no
//! BOM, NaN or trailing commas; lone surrogate escapes and invalid UTF-8 refused; numbers
//! that overflow a double refused; at most 1024 nested containers), for the JWT validator.
//! It builds nothing but what `jwt_valid` asks: whether the top level is an object and
//! whether its last `"alg"` member is a string.

const MAX_DEPTH: usize = 1024;

pub struct TopObject {
    pub alg_is_str: bool,
}

struct P<'a> {
    b: &'a [u8],
    i: usize,
}

#[derive(PartialEq)]
enum Kind {
    Str,
    Other,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        let mut v = 0u32;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    /// A string; returns its decoded text when `keep` (for object keys at the top level).
    fn string(&mut self, keep: bool) -> Option<Vec<u8>> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        let mut run = self.i;
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    let raw = &self.b[run..self.i];
                    std::str::from_utf8(raw).ok()?;
                    if keep {
                        out.extend_from_slice(raw);
                    }
                    self.i += 1;
                    return Some(out);
                }
                b'\\' => {
                    let raw = &self.b[run..self.i];
                    std::str::from_utf8(raw).ok()?;
                    if keep {
                        out.extend_from_slice(raw);
                    }
                    self.i += 1;
                    let esc = self.peek()?;
                    self.i += 1;
                    let ch: char = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xDC00..0xE000).contains(&hi) {
                                return None; // a low surrogate first
                            }
                            if (0xD800..0xDC00).contains(&hi) {
                                self.lit(b"\\u")?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                            } else {
                                char::from_u32(hi)?
                            }
                        }
                        _ => return None,
                    };
                    if keep {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    run = self.i;
                }
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
    }

    fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        let x: f64 = text.parse().ok()?;
        x.is_finite().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// One value; `top` asks for the `"alg"` bookkeeping of the top-level object.
    fn value(&mut self, depth: usize, top: Option<&mut TopObject>) -> Option<Kind> {
        match self.peek()? {
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(Kind::Other);
                }
                let mut top = top;
                loop {
                    self.ws();
                    if self.peek()? != b'"' {
                        return None;
                    }
                    let key = self.string(top.is_some())?;
                    self.ws();
                    if self.peek()? != b':' {
                        return None;
                    }
                    self.i += 1;
                    self.ws();
                    let kind = self.value(depth + 1, None)?;
                    if let Some(t) = top.as_deref_mut() {
                        if key == b"alg" {
                            t.alg_is_str = kind == Kind::Str;
                        }
                    }
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(Kind::Other);
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(Kind::Other);
                }
                loop {
                    self.ws();
                    self.value(depth + 1, None)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(Kind::Other);
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => self.string(false).map(|_| Kind::Str),
            b't' => self.lit(b"true").map(|()| Kind::Other),
            b'f' => self.lit(b"false").map(|()| Kind::Other),
            b'n' => self.lit(b"null").map(|()| Kind::Other),
            _ => self.number().map(|()| Kind::Other),
        }
    }
}

/// `Some` when `b` is one valid JSON document whose top level is an object.
pub fn top_object(b: &[u8]) -> Option<TopObject> {
    let mut p = P { b, i: 0 };
    p.ws();
    if p.peek()? != b'{' {
        return None;
    }
    let mut top = TopObject { alg_is_str: false };
    p.value(0, Some(&mut top))?;
    p.ws();
    (p.i == b.len()).then_some(top)
}

#[cfg(test)]
mod tests {
    use super::top_object;

    #[test]
    fn accepts_and_refuses_like_orjson() {
        assert!(top_object(br#"{"alg":"HS256"}"#).unwrap().alg_is_str);
        assert!(!top_object(br#"{"alg":"x","alg":1}"#).unwrap().alg_is_str);
        assert!(top_object(br#"{"a":1,}"#).is_none());
        assert!(top_object(br#"{"a":"\ud800"}"#).is_none());
        assert!(top_object(br#"{"a":1e999}"#).is_none());
        assert!(top_object(b"\xef\xbb\xbf{}").is_none());
        assert!(top_object(br#"{"\u0061lg":"x"}"#).unwrap().alg_is_str);
        let deep = format!("{}1{}", r#"{"a":"#.repeat(1024), "}".repeat(1024));
        assert!(top_object(deep.as_bytes()).is_some());
        let deeper = format!("{}1{}", r#"{"a":"#.repeat(1025), "}".repeat(1025));
        assert!(top_object(deeper.as_bytes()).is_none());
    }
}
