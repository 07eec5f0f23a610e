//! The hot transforms of `trustzones/dlp/transforms.py`, with identical outputs: FF1
//! (NIST SP 800-38G: `ff1_decimal` for radix 10 up to 36 numerals, the `fpe` crate on
//! RustCrypto `aes` otherwise), keyed HMAC-SHA-256 (`hmac` + `sha2`), `mask` on ASCII text,
//! and the plan executor, which also runs `hash`, `generalize`, `date_shift`, `redact_text`
//! and `encrypt_fpe` on the values where they succeed. Checks whose failures have messages
//! (lengths, alphabets, keys, unparsable values) stay in Python: the native code hands
//! every value it is not sure of to the Python function, which accepts it or raises.

use aes::{Aes128, Aes192, Aes256};
use fpe::ff1::{FlexibleNumeralString, FF1};
use hmac::{Hmac, KeyInit, Mac};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use sha2::Sha256;

enum Cipher {
    A128(FF1<Aes128>),
    A192(FF1<Aes192>),
    A256(FF1<Aes256>),
}

/// FF1 with one AES key and one radix.
#[pyclass(module = "trustzones_native", frozen, name = "FF1")]
pub struct Ff1 {
    cipher: Cipher,
    radix: u32,
    /// For radix 10: the same key for `decimal`, the FF1 of short decimal strings.
    decimal: Option<AesKey>,
}

enum AesKey {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl AesKey {
    fn new(key: &[u8]) -> Option<Self> {
        use aes::cipher::KeyInit as _;
        Some(match key.len() {
            16 => AesKey::A128(Aes128::new_from_slice(key).ok()?),
            24 => AesKey::A192(Aes192::new_from_slice(key).ok()?),
            32 => AesKey::A256(Aes256::new_from_slice(key).ok()?),
            _ => return None,
        })
    }

    fn encrypt(&self, block: &mut [u8; 16]) {
        use aes::cipher::BlockCipherEncrypt as _;
        let mut b = aes::Block::from(*block);
        match self {
            AesKey::A128(c) => c.encrypt_block(&mut b),
            AesKey::A192(c) => c.encrypt_block(&mut b),
            AesKey::A256(c) => c.encrypt_block(&mut b),
        }
        block.copy_from_slice(&b);
    }

    /// CBC-MAC step: `state = AES(state xor block)`.
    fn absorb(&self, state: &mut [u8; 16], block: &[u8]) {
        for (s, b) in state.iter_mut().zip(block) {
            *s ^= b;
        }
        self.encrypt(state);
    }
}

/// FF1 (NIST SP 800-38G, Algorithms 7 and 8) for radix 10 and at most 18 numerals per
/// half, in 128-bit integers: every value the Feistel rounds handle is below 10^18, the
/// round input `[i] || NUM(B)` fits the last block of Q and `d` is at most 16, so each
/// round costs one AES call. None outside that range (or below the 10^6 minimum domain,
/// where the general implementation raises its error).
fn ff1_decimal(aes: &AesKey, x: &[u16], tweak: &[u8], decrypt: bool) -> Option<Vec<u16>> {
    let n = x.len();
    let (u, v) = (n / 2, n - n / 2);
    if !(6..=36).contains(&n) || tweak.len() > u32::MAX as usize || x.iter().any(|&d| d > 9) {
        return None;
    }
    let num = |digits: &[u16]| digits.iter().fold(0u128, |acc, &d| acc * 10 + u128::from(d));
    // Steps 3-4: b = ceil(ceil(v log2 10) / 8) bytes; ceil(v log2 10) is the bit length
    // of 10^v (never a power of two). d = 4 ceil(b/4) + 4.
    let bits = 128 - 10u128.pow(v as u32).leading_zeros() as usize;
    let b = bits.div_ceil(8);
    let d = 4 * b.div_ceil(4) + 4;
    // Step 5: P = [1]^1 [2]^1 [1]^1 [radix]^3 [10]^1 [u mod 256]^1 [n]^4 [t]^4.
    let mut state = [0u8; 16];
    state[..6].copy_from_slice(&[1, 2, 1, 0, 0, 10]);
    state[6] = 10;
    state[7] = (u % 256) as u8;
    state[8..12].copy_from_slice(&(n as u32).to_be_bytes());
    state[12..].copy_from_slice(&(tweak.len() as u32).to_be_bytes());
    aes.encrypt(&mut state);
    // Q = T || [0]^((-t-b-1) mod 16) || [i]^1 || [NUM(B)]^b: all but its last block is the
    // same in every round, so the CBC-MAC state after it is computed once.
    let pad = (16 - (tweak.len() + b + 1) % 16) % 16;
    let mut q = Vec::with_capacity(tweak.len() + pad + 1 + b);
    q.extend_from_slice(tweak);
    q.resize(tweak.len() + pad, 0);
    let head = q.len() + 1 + b - 16;
    for block in q[..head].chunks(16) {
        aes.absorb(&mut state, block);
    }
    let mut last = [0u8; 16];
    last[..q.len() - head].copy_from_slice(&q[head..]);
    let round = |i: u8, feed: u128, m: usize| -> u128 {
        let mut block = last;
        block[15 - b] = i;
        block[16 - b..].copy_from_slice(&feed.to_be_bytes()[16 - b..]);
        let mut r = state;
        aes.absorb(&mut r, &block);
        // y = NUM(S), S = R[..d] (d <= 16: no extra blocks); only y mod 10^m is needed.
        let modulus = 10u128.pow(m as u32);
        r[..d].iter().fold(0u128, |acc, &byte| (acc * 256 + u128::from(byte)) % modulus)
    };
    let (mut a, mut bb) = (num(&x[..u]), num(&x[u..]));
    if decrypt {
        for i in (0..10u8).rev() {
            let m = if i % 2 == 0 { u } else { v };
            let modulus = 10u128.pow(m as u32);
            let c = (bb + modulus - round(i, a, m)) % modulus;
            bb = a;
            a = c;
        }
    } else {
        for i in 0..10u8 {
            let m = if i % 2 == 0 { u } else { v };
            let c = (a + round(i, bb, m)) % 10u128.pow(m as u32);
            a = bb;
            bb = c;
        }
    }
    let mut out = vec![0u16; n];
    let (left, right) = out.split_at_mut(u);
    for (digits, mut value) in [(left, a), (right, bb)] {
        for slot in digits.iter_mut().rev() {
            *slot = (value % 10) as u16;
            value /= 10;
        }
    }
    Some(out)
}

fn fpe_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("FF1 failed: {e}"))
}

impl Ff1 {
    fn run(&self, numerals: Vec<u16>, tweak: &[u8], decrypt: bool) -> PyResult<Vec<u16>> {
        if let Some(out) = self.decimal.as_ref().and_then(|aes| ff1_decimal(aes, &numerals, tweak, decrypt)) {
            return Ok(out);
        }
        let ns = FlexibleNumeralString::from(numerals);
        let out = match (&self.cipher, decrypt) {
            (Cipher::A128(c), false) => c.encrypt(tweak, &ns),
            (Cipher::A128(c), true) => c.decrypt(tweak, &ns),
            (Cipher::A192(c), false) => c.encrypt(tweak, &ns),
            (Cipher::A192(c), true) => c.decrypt(tweak, &ns),
            (Cipher::A256(c), false) => c.encrypt(tweak, &ns),
            (Cipher::A256(c), true) => c.decrypt(tweak, &ns),
        }
        .map_err(fpe_error)?;
        Ok(out.into())
    }

    fn digits(&self, text: &str, tweak: &[u8], decrypt: bool) -> PyResult<String> {
        if self.radix != 10 || !text.bytes().all(|c| c.is_ascii_digit()) {
            return Err(PyValueError::new_err("FF1 input has a character outside the alphabet"));
        }
        let numerals: Vec<u16> = text.bytes().map(|c| u16::from(c - b'0')).collect();
        let out = self.run(numerals, tweak, decrypt)?;
        Ok(out.into_iter().map(|d| char::from(b'0' + d as u8)).collect())
    }
}

#[pymethods]
impl Ff1 {
    #[new]
    fn new(key: &[u8], radix: u32) -> PyResult<Self> {
        let bad_radix = |e| PyValueError::new_err(format!("FF1 radix must be 2..65536: {e:?}"));
        let cipher = match key.len() {
            16 => Cipher::A128(FF1::new(key, radix).map_err(bad_radix)?),
            24 => Cipher::A192(FF1::new(key, radix).map_err(bad_radix)?),
            32 => Cipher::A256(FF1::new(key, radix).map_err(bad_radix)?),
            _ => return Err(PyValueError::new_err("FF1 needs an AES key of 16, 24 or 32 bytes")),
        };
        let decimal = if radix == 10 { AesKey::new(key) } else { None };
        Ok(Ff1 { cipher, radix, decimal })
    }

    /// Encrypt a string of ASCII digits (radix 10).
    fn encrypt_digits(&self, text: &str, tweak: &[u8]) -> PyResult<String> {
        self.digits(text, tweak, false)
    }

    fn decrypt_digits(&self, text: &str, tweak: &[u8]) -> PyResult<String> {
        self.digits(text, tweak, true)
    }

    /// Encrypt numerals (each below the radix).
    fn encrypt_numerals(&self, numerals: Vec<u16>, tweak: &[u8]) -> PyResult<Vec<u16>> {
        self.run(numerals, tweak, false)
    }

    fn decrypt_numerals(&self, numerals: Vec<u16>, tweak: &[u8]) -> PyResult<Vec<u16>> {
        self.run(numerals, tweak, true)
    }
}

/// HMAC-SHA-256 with one key; the keyed state is computed once.
#[pyclass(module = "trustzones_native", frozen)]
pub struct HmacSha256 {
    mac: Hmac<Sha256>,
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_nopad(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(B64URL[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[pymethods]
impl HmacSha256 {
    #[new]
    fn new(key: &[u8]) -> PyResult<Self> {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|e| PyValueError::new_err(format!("HMAC key: {e}")))?;
        Ok(HmacSha256 { mac })
    }

    /// The digest of `data`.
    fn digest<'py>(&self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        let mut mac = self.mac.clone();
        mac.update(data);
        PyBytes::new(py, &mac.finalize().into_bytes())
    }

    /// `prefix + encode(HMAC(text as UTF-8, surrogates passed))[:length]`: the `hash`
    /// transform after its normalisation, `hex` or unpadded base64url.
    #[pyo3(signature = (text, *, hex, length, prefix))]
    fn hash_text(&self, text: &Bound<'_, PyString>, hex: bool, length: Option<usize>, prefix: &str) -> PyResult<String> {
        let mut mac = self.mac.clone();
        match text.to_str() {
            Ok(s) => mac.update(s.as_bytes()),
            Err(_) => {
                let encoded = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
                mac.update(encoded.cast::<PyBytes>()?.as_bytes());
            }
        }
        Ok(encode_digest(&mac.finalize().into_bytes(), hex, length, prefix))
    }
}

/// `transforms.mask_text` for ASCII `text`; None when `text` is not ASCII (Python masks
/// it: letters and digits of every script count there).
#[pyfunction]
#[pyo3(signature = (text, *, keep_first, keep_last, char, keep_separators))]
pub fn mask_ascii(text: &str, mut keep_first: usize, mut keep_last: usize, char: &str, keep_separators: bool) -> Option<String> {
    let b = text.as_bytes();
    if !b.is_ascii() {
        return None;
    }
    let n = b.iter().filter(|c| c.is_ascii_alphanumeric()).count();
    if keep_first.saturating_add(keep_last) >= n {
        keep_first = 0;
        keep_last = 0;
    }
    let mut out = String::with_capacity(text.len() * char.len());
    if !keep_separators {
        let mut seen = 0;
        for &c in b {
            if c.is_ascii_alphanumeric() {
                if seen < keep_first || seen >= n - keep_last {
                    out.push(char::from(c));
                } else {
                    out.push_str(char);
                }
                seen += 1;
            } else {
                out.push_str(char);
            }
        }
        return Some(out);
    }
    let mut start = 0;
    if keep_first > 0 {
        let mut seen = 0;
        for (i, c) in b.iter().enumerate() {
            if c.is_ascii_alphanumeric() {
                seen += 1;
                if seen == keep_first {
                    start = i + 1;
                    break;
                }
            }
        }
    }
    let mut end = b.len();
    if keep_last > 0 {
        let mut seen = 0;
        for i in (0..b.len()).rev() {
            if b[i].is_ascii_alphanumeric() {
                seen += 1;
                if seen == keep_last {
                    end = i;
                    break;
                }
            }
        }
    }
    out.push_str(&text[..start]);
    for &c in &b[start..end] {
        if c.is_ascii_alphanumeric() {
            out.push_str(char);
        } else {
            out.push(char::from(c));
        }
    }
    out.push_str(&text[end..]);
    Some(out)
}

// -- the plan executor ---------------------------------------------------------------------

/// What a step does natively when the value allows it; otherwise its Python function runs.
enum NativeOp {
    None,
    Suppress,
    /// `mask` on an ASCII string.
    Mask { keep_first: usize, keep_last: usize, char: String, keep_separators: bool },
    /// `hash` of a string: any string without normalisation, an ASCII string with it.
    Hash { mac: Hmac<Sha256>, hex: bool, length: Option<usize>, prefix: String, normalize: Normalize },
    /// `generalize` method `zip` of a 5-digit (or ZIP+4) ASCII string or an int.
    Zip { keep: usize, hipaa: bool },
    /// `generalize` method `date`: an ISO date (or date-time of `iso::tail`) to `YYYY[-MM]`.
    DateTrunc { year: bool },
    /// `generalize` methods `bucket` and `age` of an int or a float.
    Number { age: bool, width: Option<u64>, cap: u64 },
    /// `redact_text` of an ASCII string with the scanner's native engine.
    Redact { engine: Py<crate::engine::Engine>, type_style: bool, mask_char: String },
    /// `encrypt_fpe` with the decimal alphabet of an ASCII string or an int, when it succeeds.
    Fpe { ff1: Box<Ff1>, tweak: Vec<u8>, keep_first: usize, keep_last: usize, luhn_invalid: bool },
    /// `date_shift` of an ISO date (or date-time of `iso::tail`) by the subject's HMAC.
    DateShift { mac: Hmac<Sha256>, max_days: u64, subject: Option<Vec<Py<PyString>>> },
}

#[derive(Clone, Copy)]
enum Normalize {
    None,
    /// `fold_digits(text).strip().casefold()`; on ASCII text: strip, lower case.
    Casefold,
    /// Only the digits; on ASCII text: the ASCII digits.
    Digits,
}

struct Step {
    segs: Vec<Py<PyString>>,
    op: NativeOp,
    /// `call(value, subject)`: the transform with `Transformer._apply_simple`'s error
    /// handling; returns the new value or `SUPPRESSED`.
    call: Py<PyAny>,
    /// `subject(record)`: the date_shift subject, read from the original record first.
    subject: Option<Py<PyAny>>,
}

/// `Transformer.apply_record` for a plan whose every path is made of object keys: the
/// same steps in the same order, the same copy-on-write (each container copied at most
/// once, the input never changed), the same errors (raised by Python's `fail`).
#[pyclass(module = "trustzones_native", frozen)]
pub struct PlanExecutor {
    steps: Vec<Step>,
    suppressed: Py<PyAny>,
    /// `fail(step, depth, node)`: raises the TransformError of a non-object container.
    fail: Py<PyAny>,
    dict_type: Py<PyAny>,
}

impl PlanExecutor {
    fn get<'py>(node: &Bound<'py, PyAny>, key: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Ok(d) = node.cast_exact::<PyDict>() {
            return d.get_item(key);
        }
        // A dict subclass: its own `get`, as the Python code calls it, with a fresh
        // object as the default so that a stored value is never mistaken for "missing".
        let marker = pyo3::types::PyList::empty(node.py());
        let got = node.call_method1("get", (key, &marker))?;
        Ok(if got.is(&marker) { None } else { Some(got) })
    }

    fn copy<'py>(&self, node: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match node.cast_exact::<PyDict>() {
            Ok(d) => Ok(d.copy()?.into_any()),
            Err(_) => self.dict_type.bind(node.py()).call1((node,)),
        }
    }

    fn run_native<'py>(&self, py: Python<'py>, op: &NativeOp, value: &Bound<'py, PyAny>, subject: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(match op {
            NativeOp::None => None,
            NativeOp::Suppress => Some(self.suppressed.bind(py).clone()),
            NativeOp::Mask { keep_first, keep_last, char, keep_separators } => match value.cast_exact::<PyString>() {
                Ok(s) => match s.to_str().ok().and_then(|t| mask_ascii(t, *keep_first, *keep_last, char, *keep_separators)) {
                    Some(out) => Some(PyString::new(py, &out).into_any()),
                    None => None,
                },
                Err(_) => None,
            },
            NativeOp::Hash { mac, hex, length, prefix, normalize } => match value.cast_exact::<PyString>() {
                Ok(s) => match s.to_str() {
                    Ok(text) => {
                        let normalized;
                        let data = match normalize {
                            Normalize::None => text.as_bytes(),
                            _ if !text.is_ascii() => return Ok(None),
                            Normalize::Casefold => {
                                normalized = py_strip(text.as_bytes()).to_ascii_lowercase();
                                &normalized[..]
                            }
                            Normalize::Digits => {
                                normalized = text.bytes().filter(u8::is_ascii_digit).collect::<Vec<u8>>();
                                &normalized[..]
                            }
                        };
                        let mut m = mac.clone();
                        m.update(data);
                        Some(PyString::new(py, &encode_digest(&m.finalize().into_bytes(), *hex, *length, prefix)).into_any())
                    }
                    Err(_) => None,
                },
                Err(_) => None,
            },
            NativeOp::Zip { keep, hipaa } => zip_prefix(value, *keep, *hipaa).map(|out| PyString::new(py, &out).into_any()),
            NativeOp::DateTrunc { year } => ascii_str(value)
                .and_then(iso::parse)
                .map(|(y, m, _)| PyString::new(py, &if *year { format!("{y:04}") } else { format!("{y:04}-{m:02}") }).into_any()),
            NativeOp::Number { age, width, cap } => generalize_number(py, value, *age, *width, *cap)?,
            NativeOp::Redact { engine, type_style, mask_char } => {
                let Ok(s) = value.cast_exact::<PyString>() else { return Ok(None) };
                let Some(text) = s.to_str().ok().filter(|t| t.is_ascii()) else { return Ok(None) };
                // ASCII: no normalisation, so the offsets are those of `text` itself.
                let spans = engine.get().scan_ascii_spans(text)?.into_iter().map(|(s, e, t)| (s, e, t.to_owned())).collect();
                Some(PyString::new(py, &redact_ascii(text, spans, *type_style, mask_char)).into_any())
            }
            NativeOp::Fpe { ff1, tweak, keep_first, keep_last, luhn_invalid } => {
                let text = if value.is_exact_instance_of::<PyInt>() {
                    match value.extract::<i64>() {
                        Ok(i) => i.to_string(),
                        Err(_) => return Ok(None),
                    }
                } else {
                    match ascii_str(value) {
                        Some(t) => t.to_owned(),
                        None => return Ok(None),
                    }
                };
                fpe_digits(ff1, &text, tweak, *keep_first, *keep_last, *luhn_invalid)?.map(|out| PyString::new(py, &out).into_any())
            }
            NativeOp::DateShift { mac, max_days, .. } => {
                let Some(text) = ascii_str(value) else { return Ok(None) };
                let Some((y, m, d)) = iso::parse(text) else { return Ok(None) };
                let Some(data) = subject_bytes(subject) else { return Ok(None) };
                let mut h = mac.clone();
                h.update(&data);
                let digest = h.finalize().into_bytes();
                let mut first = [0u8; 8];
                first.copy_from_slice(&digest[..8]);
                let k = u64::from_be_bytes(first) % (2 * max_days);
                let days = if k < *max_days { k as i64 - *max_days as i64 } else { k as i64 - *max_days as i64 + 1 };
                // Out of range (None): Python raises its error.
                iso::add_days(y, m, d, days).map(|(y, m, d)| PyString::new(py, &format!("{y:04}-{m:02}-{d:02}{}", &text[10..])).into_any())
            }
        })
    }

    /// The subject of a `date_shift` step read natively from the original record: only
    /// through exact dicts to an exact str or int; None lets Python's `subject` read it
    /// (and raise its error).
    fn native_subject<'py>(py: Python<'py>, record: &Bound<'py, PyAny>, segs: &[Py<PyString>]) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut node = record.clone();
        for seg in segs {
            let Ok(d) = node.cast_exact::<PyDict>() else { return Ok(None) };
            match d.get_item(seg.bind(py))? {
                Some(child) => node = child,
                None => return Ok(None),
            }
        }
        Ok(if node.is_exact_instance_of::<PyString>() || node.is_exact_instance_of::<PyInt>() { Some(node) } else { None })
    }
}

fn encode_digest(digest: &[u8], hex: bool, length: Option<usize>, prefix: &str) -> String {
    let mut out = if hex {
        let mut s = String::with_capacity(64);
        for b in digest {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    } else {
        b64url_nopad(digest)
    };
    if let Some(n) = length {
        out.truncate(n);
    }
    format!("{prefix}{out}")
}

#[pymethods]
impl PlanExecutor {
    /// `steps`: (segments, op, call, subject or None) per step, where `op` is `None`,
    /// `("suppress",)`, `("mask", keep_first, keep_last, char, keep_separators)` or
    /// `("hash", key, hex, length, prefix, normalize)`, `("zip", keep, hipaa)`,
    /// `("date_trunc", year)`, `("redact", engine, type_style, mask_char)`,
    /// `("fpe", key, tweak, keep_first, keep_last, luhn_invalid)`, `("number", age, width, cap)` or
    /// `("date_shift", key, max_days, subject key segments or None)`.
    #[new]
    fn new(py: Python<'_>, steps: Vec<(Vec<Py<PyString>>, Option<Bound<'_, PyTuple>>, Py<PyAny>, Option<Py<PyAny>>)>, suppressed: Py<PyAny>, fail: Py<PyAny>) -> PyResult<Self> {
        let mut out = Vec::with_capacity(steps.len());
        for (segs, op, call, subject) in steps {
            if segs.is_empty() {
                return Err(PyValueError::new_err("a plan step needs a field path"));
            }
            let op = match op {
                None => NativeOp::None,
                Some(t) => {
                    let kind: String = t.get_item(0)?.extract()?;
                    match kind.as_str() {
                        "suppress" => NativeOp::Suppress,
                        "mask" => NativeOp::Mask {
                            keep_first: t.get_item(1)?.extract()?,
                            keep_last: t.get_item(2)?.extract()?,
                            char: t.get_item(3)?.extract()?,
                            keep_separators: t.get_item(4)?.extract()?,
                        },
                        "hash" => {
                            let key: Vec<u8> = t.get_item(1)?.extract()?;
                            NativeOp::Hash {
                                mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|e| PyValueError::new_err(format!("HMAC key: {e}")))?,
                                hex: t.get_item(2)?.extract()?,
                                length: t.get_item(3)?.extract()?,
                                prefix: t.get_item(4)?.extract()?,
                                normalize: match t.get_item(5)?.extract::<String>()?.as_str() {
                                    "none" => Normalize::None,
                                    "casefold" => Normalize::Casefold,
                                    "digits" => Normalize::Digits,
                                    other => return Err(PyValueError::new_err(format!("unknown hash normalisation {other:?}"))),
                                },
                            }
                        }
                        "redact" => NativeOp::Redact {
                            engine: t.get_item(1)?.cast::<crate::engine::Engine>()?.clone().unbind(),
                            type_style: t.get_item(2)?.extract()?,
                            mask_char: t.get_item(3)?.extract()?,
                        },
                        "fpe" => {
                            let key: Vec<u8> = t.get_item(1)?.extract()?;
                            let luhn_invalid: bool = t.get_item(5)?.extract()?;
                            let keep_last: usize = t.get_item(4)?.extract()?;
                            NativeOp::Fpe {
                                ff1: Box::new(Ff1::new(&key, 10)?),
                                tweak: t.get_item(2)?.extract()?,
                                keep_first: t.get_item(3)?.extract()?,
                                keep_last: if luhn_invalid { 1 } else { keep_last },
                                luhn_invalid,
                            }
                        }
                        "zip" => NativeOp::Zip { keep: t.get_item(1)?.extract()?, hipaa: t.get_item(2)?.extract()? },
                        "date_trunc" => NativeOp::DateTrunc { year: t.get_item(1)?.extract()? },
                        "number" => {
                            let width: Option<u64> = t.get_item(2)?.extract()?;
                            let cap: u64 = t.get_item(3)?.extract()?;
                            if width.is_some_and(|w| w == 0 || w > EXACT_F64) || cap > EXACT_F64 {
                                return Err(PyValueError::new_err("generalize width and cap must be 1..2**53"));
                            }
                            NativeOp::Number { age: t.get_item(1)?.extract()?, width, cap }
                        }
                        "date_shift" => {
                            let key: Vec<u8> = t.get_item(1)?.extract()?;
                            let max_days: u64 = t.get_item(2)?.extract()?;
                            if !(1..=36_500).contains(&max_days) {
                                return Err(PyValueError::new_err("date_shift max_days must be 1..36500"));
                            }
                            NativeOp::DateShift {
                                mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|e| PyValueError::new_err(format!("HMAC key: {e}")))?,
                                max_days,
                                subject: t.get_item(3)?.extract()?,
                            }
                        }
                        other => return Err(PyValueError::new_err(format!("unknown native op {other:?}"))),
                    }
                }
            };
            out.push(Step { segs, op, call, subject });
        }
        let dict_type = py.import("builtins")?.getattr("dict")?.unbind();
        Ok(PlanExecutor { steps: out, suppressed, fail, dict_type })
    }

    /// Apply the plan to one decoded record; returns the (copied where changed) record.
    fn apply<'py>(&self, py: Python<'py>, record: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let mut result = record.clone();
        // Containers this call made (they may be changed in place).
        let mut owned: Vec<Bound<'py, PyAny>> = Vec::new();
        let is_owned = |owned: &[Bound<'py, PyAny>], x: &Bound<'py, PyAny>| owned.iter().any(|o| o.is(x));
        'steps: for (si, step) in self.steps.iter().enumerate() {
            let native_subject = match &step.op {
                NativeOp::DateShift { subject: Some(segs), .. } => Self::native_subject(py, record, segs)?,
                _ => None,
            };
            let subject = match (native_subject, &step.subject) {
                (Some(s), _) => s,
                (None, Some(f)) => f.bind(py).call1((record,))?,
                (None, None) => py.None().into_bound(py),
            };
            let mut node = result.clone();
            for (i, seg) in step.segs.iter().enumerate() {
                if node.is_none() {
                    continue 'steps;
                }
                if !node.is_instance_of::<PyDict>() {
                    self.fail.bind(py).call1((si, i, &node))?;
                    return Err(PyValueError::new_err("fail() must raise"));
                }
                match Self::get(&node, seg.bind(py))? {
                    None => continue 'steps,
                    Some(child) => node = child,
                }
            }
            let value = node;
            let r = if value.is_none() && !matches!(step.op, NativeOp::Suppress) {
                value
            } else {
                match self.run_native(py, &step.op, &value, &subject)? {
                    Some(r) => r,
                    None => step.call.bind(py).call1((&value, &subject))?,
                }
            };
            if !is_owned(&owned, &result) {
                result = self.copy(&result)?;
                owned.push(result.clone());
            }
            let mut parent = result.clone();
            let last = step.segs.len() - 1;
            for seg in &step.segs[..last] {
                let pd = parent.cast::<PyDict>()?;
                let mut child = pd.get_item(seg.bind(py))?.ok_or_else(|| PyValueError::new_err("plan path vanished"))?;
                if !is_owned(&owned, &child) {
                    child = self.copy(&child)?;
                    owned.push(child.clone());
                    pd.set_item(seg.bind(py), &child)?;
                }
                parent = child;
            }
            let pd = parent.cast::<PyDict>()?;
            if r.is(self.suppressed.bind(py)) {
                pd.del_item(step.segs[last].bind(py))?;
            } else {
                pd.set_item(step.segs[last].bind(py), r)?;
            }
        }
        Ok(result)
    }
}

/// Python's `str.strip()` on ASCII bytes: its whitespace includes the separators 0x1c-0x1f.
fn py_strip(b: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f);
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

/// The text of an exact ASCII `str`.
fn ascii_str<'a>(value: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    let s = value.cast_exact::<PyString>().ok()?;
    let t = s.to_str().ok()?;
    t.is_ascii().then_some(t)
}

/// `str(subject).encode()` for an exact str (without surrogates) or an int of 64 bits.
fn subject_bytes(subject: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(s) = subject.cast_exact::<PyString>() {
        return s.to_str().ok().map(|t| t.as_bytes().to_vec());
    }
    if subject.is_exact_instance_of::<PyInt>() {
        return subject.extract::<i64>().ok().map(|i| i.to_string().into_bytes());
    }
    None
}

// The 3-digit ZIP prefixes of `transforms._HIPAA_ZIP3` (HHS: under 20,000 people).
const HIPAA_ZIP3: [&[u8; 3]; 17] = [
    b"036", b"059", b"063", b"102", b"203", b"556", b"692", b"790", b"821", b"823", b"830", b"831", b"878",
    b"879", b"884", b"890", b"893",
];

/// `generalize` method `zip` when it succeeds; None for anything Python must judge.
fn zip_prefix(value: &Bound<'_, PyAny>, keep: usize, hipaa: bool) -> Option<String> {
    let mut digits = [0u8; 5];
    if value.is_exact_instance_of::<PyInt>() {
        let v: i64 = value.extract().ok()?;
        if !(0..=99_999).contains(&v) {
            return None;
        }
        digits.copy_from_slice(format!("{v:05}").as_bytes());
    } else {
        let b = py_strip(ascii_str(value)?.as_bytes());
        let plus4 = b.len() == 10 && b[5] == b'-' && b[6..].iter().all(u8::is_ascii_digit);
        if !(b.len() == 5 || plus4) || !b[..5].iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.copy_from_slice(&b[..5]);
    }
    let keep = keep.min(5);
    let zero = hipaa && HIPAA_ZIP3.iter().any(|z| z[..] == digits[..3]);
    let mut out = String::with_capacity(5);
    for &d in &digits[..keep] {
        out.push(if zero { '0' } else { char::from(d) });
    }
    out.extend(std::iter::repeat_n('*', 5 - keep));
    Some(out)
}

/// 2**53: integers up to here are exact as floats.
const EXACT_F64: u64 = 1 << 53;

/// Python's `float.__floordiv__` (floor of the quotient, corrected as CPython's
/// `float_divmod` does so that `x // w * w + x % w` stays close to `x`).
fn py_floordiv(x: f64, w: f64) -> f64 {
    let m = x % w;
    let mut div = (x - m) / w;
    if m != 0.0 && (w < 0.0) != (m < 0.0) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut fd = div.floor();
        if div - fd > 0.5 {
            fd += 1.0;
        }
        fd
    } else {
        (0.0f64).copysign(x / w)
    }
}

/// `generalize` methods `bucket` and `age` when they succeed on an exact int (64 bits) or
/// float; None for anything Python must judge (strings, errors, huge numbers).
fn generalize_number<'py>(py: Python<'py>, value: &Bound<'py, PyAny>, age: bool, width: Option<u64>, cap: u64) -> PyResult<Option<Bound<'py, PyAny>>> {
    let x = if value.is_exact_instance_of::<PyInt>() {
        match value.extract::<i64>() {
            Ok(i) => i as f64,
            Err(_) => return Ok(None),
        }
    } else if let Ok(f) = value.cast_exact::<PyFloat>() {
        f.value()
    } else {
        return Ok(None);
    };
    if !x.is_finite() {
        return Ok(None);
    }
    if age {
        if x < 0.0 {
            return Ok(None);
        }
        if x > cap as f64 {
            return Ok(Some(PyString::new(py, &format!("{}+", cap + 1)).into_any()));
        }
        if width.is_none() {
            // int(x): x is at most cap < 2**53 here.
            return Ok(Some((x.trunc() as i64).into_pyobject(py)?.into_any()));
        }
    }
    let Some(w) = width else { return Ok(None) };
    let fd = py_floordiv(x, w as f64);
    if fd.abs() >= 2f64.powi(62) {
        return Ok(None);
    }
    let lo = i128::from(fd as i64) * i128::from(w);
    Ok(Some(PyString::new(py, &format!("{lo}-{}", lo + i128::from(w) - 1)).into_any()))
}

/// The ISO 8601 forms handled natively, a strict subset of what `transforms._parse_iso_date`
/// accepts (`date.fromisoformat` of the first 10 characters, `datetime.fromisoformat` of the
/// whole): anything else goes to Python, which accepts it or raises its error.
mod iso {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    }

    fn days_in_month(y: i64, m: u32) -> u32 {
        match m {
            2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// `YYYY-MM-DD` then nothing, or `T`/space `HH:MM:SS`, optionally `.` and 3 or 6
    /// digits, optionally `Z` or `+HH:MM`/`-HH:MM`: the date.
    pub fn parse(text: &str) -> Option<(i64, u32, u32)> {
        let b = text.as_bytes();
        if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let (y, m, d) = (num(&b[..4])?, num(&b[5..7])?, num(&b[8..10])?);
        if y == 0 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(i64::from(y), m) {
            return None;
        }
        tail(&b[10..]).then_some((i64::from(y), m, d))
    }

    fn tail(b: &[u8]) -> bool {
        if b.is_empty() {
            return true;
        }
        if b.len() < 9 || !(b[0] == b'T' || b[0] == b' ') || b[3] != b':' || b[6] != b':' {
            return false;
        }
        match (num(&b[1..3]), num(&b[4..6]), num(&b[7..9])) {
            (Some(h), Some(mi), Some(s)) if h < 24 && mi < 60 && s < 60 => {}
            _ => return false,
        }
        let mut rest = &b[9..];
        if rest.first() == Some(&b'.') {
            let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n != 3 && n != 6 {
                return false;
            }
            rest = &rest[1 + n..];
        }
        match rest {
            [] | [b'Z'] => true,
            [b'+' | b'-', h1, h2, b':', m1, m2] => {
                matches!((num(&[*h1, *h2]), num(&[*m1, *m2])), (Some(h), Some(m)) if h < 24 && m < 60)
            }
            _ => false,
        }
    }

    // Days since 0000-03-01 of the proleptic Gregorian calendar, and back (the civil
    // calendar algorithms of Howard Hinnant's "chrono-Compatible Low-Level Date
    // Algorithms", written out here).
    fn to_days(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = i64::from((m + 9) % 12);
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe
    }

    fn from_days(z: i64) -> (i64, u32, u32) {
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// The date `days` after y-m-d; None outside years 1..=9999 (Python's OverflowError).
    pub fn add_days(y: i64, m: u32, d: u32, days: i64) -> Option<(i64, u32, u32)> {
        let out = from_days(to_days(y, m, d) + days);
        (1..=9999).contains(&out.0).then_some(out)
    }
}

/// `transforms.redact_spans` on ASCII text (offsets are byte offsets there).
fn redact_ascii(text: &str, mut spans: Vec<(usize, usize, String)>, type_style: bool, mask_char: &str) -> String {
    spans.sort();
    let mut out = String::with_capacity(text.len() + 16);
    let mut pos = 0;
    for (start, end, type_) in spans {
        let start = start.max(pos);
        let end = end.min(text.len());
        if start >= end {
            continue;
        }
        out.push_str(&text[pos..start]);
        if type_style {
            out.push('[');
            out.push_str(&type_);
            out.push(']');
        } else {
            for c in text[start..end].chars() {
                if c.is_ascii_alphanumeric() {
                    out.push_str(mask_char);
                } else {
                    out.push(c);
                }
            }
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// FF1 over radix 10 needs at least 6 numerals (10**6, SP 800-38G rev. 1).
const FF1_MINLEN_RADIX10: usize = 6;

/// `Transformer._fpe` (encryption, alphabet `0123456789`) of ASCII text when it succeeds;
/// None when Python must raise its error (too few digits, a Luhn-invalid input).
fn fpe_digits(ff1: &Ff1, text: &str, tweak: &[u8], keep_first: usize, keep_last: usize, luhn_invalid: bool) -> PyResult<Option<String>> {
    let b = text.as_bytes();
    let numerals: Vec<u8> = b.iter().copied().filter(u8::is_ascii_digit).collect();
    if luhn_invalid && !(numerals.len() >= 2 && crate::validators::luhn_valid(&numerals)) {
        return Ok(None);
    }
    let hi = numerals.len().saturating_sub(keep_last);
    if hi <= keep_first || hi - keep_first < FF1_MINLEN_RADIX10 {
        return Ok(None);
    }
    let middle: Vec<u16> = numerals[keep_first..hi].iter().map(|&c| u16::from(c - b'0')).collect();
    let done = ff1.run(middle, tweak, false)?;
    let mut out_numerals: Vec<u8> = numerals[..keep_first].to_vec();
    out_numerals.extend(done.iter().map(|&d| b'0' + d as u8));
    if luhn_invalid {
        // The check digit that makes the output valid, plus one: never a valid number.
        let mut probe = out_numerals.clone();
        probe.push(b'0');
        let last = probe.len() - 1;
        let check = (0..10u8).find(|&d| {
            probe[last] = b'0' + d;
            crate::validators::luhn_valid(&probe)
        });
        let Some(check) = check else { return Ok(None) };
        out_numerals.push(b'0' + (check + 1) % 10);
    } else {
        out_numerals.extend_from_slice(&numerals[hi..]);
    }
    let mut it = out_numerals.into_iter();
    let out: Vec<u8> = b.iter().map(|&c| if c.is_ascii_digit() { it.next().unwrap_or(c) } else { c }).collect();
    Ok(String::from_utf8(out).ok())
}
