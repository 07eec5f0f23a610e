//! The hot transforms of `trustzones/dlp/transforms.py`, with identical outputs: FF1
//! (NIST SP 800-38G: `ff1_decimal` for radix 10 up to 36 numerals, the `fpe` crate on
//! RustCrypto `aes` otherwise), keyed HMAC-SHA-256 (`hmac` + `sha2`), `mask` on ASCII text,
//! and the plan executor, which also runs `mask` of any text (Python's `str.isalnum` judges
//! the characters outside ASCII), `hash`, `generalize`, `date_shift`, `redact_text` and
//! `encrypt_fpe` on the values where they succeed. Checks whose failures have messages
//! (lengths, alphabets, keys, unparsable values) stay in Python: the native code hands
//! every value it is not sure of to the Python function, which accepts it or raises.

use aes::{Aes128, Aes192, Aes256};
use fpe::ff1::{FlexibleNumeralString, FF1};
use hmac::{Hmac, KeyInit, Mac};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use rustc_hash::FxHashMap;
use sha2::Sha256;
use std::sync::{Mutex, OnceLock};

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

    /// Run `f` with a function that encrypts one block in place, every call of it through
    /// one set-up of the cipher's back end: the VAES back ends of the `aes` crate broadcast
    /// the round keys to vector registers on each `encrypt_block` call, which costs more
    /// than the single block FF1 encrypts each time. (None only if the cipher did not run
    /// `f`, which it always does.)
    fn with_encryptor<R>(&self, f: impl FnOnce(&dyn Fn(&mut [u8; 16])) -> R) -> Option<R> {
        use aes::cipher::BlockCipherEncrypt as _;
        let mut out = None;
        let run = WithBackend { f, out: &mut out };
        match self {
            AesKey::A128(c) => c.encrypt_with_backend(run),
            AesKey::A192(c) => c.encrypt_with_backend(run),
            AesKey::A256(c) => c.encrypt_with_backend(run),
        }
        out
    }
}

/// The closure of `AesKey::with_encryptor`, given the back end by the cipher.
struct WithBackend<'a, F, R> {
    f: F,
    out: &'a mut Option<R>,
}

impl<F, R> aes::cipher::BlockSizeUser for WithBackend<'_, F, R> {
    type BlockSize = aes::cipher::consts::U16;
}

impl<F: FnOnce(&dyn Fn(&mut [u8; 16])) -> R, R> aes::cipher::BlockCipherEncClosure for WithBackend<'_, F, R> {
    fn call<B: aes::cipher::BlockCipherEncBackend<BlockSize = Self::BlockSize>>(self, backend: &B) {
        let encrypt = |block: &mut [u8; 16]| {
            let mut b = aes::Block::from(*block);
            backend.encrypt_block((&mut b).into());
            block.copy_from_slice(&b);
        };
        *self.out = Some((self.f)(&encrypt));
    }
}

/// CBC-MAC step: `state = AES(state xor block)`.
fn absorb(encrypt: &dyn Fn(&mut [u8; 16]), state: &mut [u8; 16], block: &[u8]) {
    for (s, b) in state.iter_mut().zip(block) {
        *s ^= b;
    }
    encrypt(state);
}

/// FF1 (NIST SP 800-38G, Algorithms 7 and 8) for radix 10 and at most 18 numerals per
/// half, in 64-bit integers: every value the Feistel rounds handle is below 10^18, the
/// round input `[i] || NUM(B)` fits the last block of Q and `d` is at most 12, so each
/// round costs one AES call and one remainder of NUM(S) < 2^96 (in 64-bit steps when
/// 10^m < 2^32: 128-bit division is slow). None outside that range (or below the 10^6
/// minimum domain, where the general implementation raises its error).
fn ff1_decimal(aes: &AesKey, x: &[u16], tweak: &[u8], decrypt: bool) -> Option<Vec<u16>> {
    let n = x.len();
    let (u, v) = (n / 2, n - n / 2);
    if !(6..=36).contains(&n) || tweak.len() > u32::MAX as usize || x.iter().any(|&d| d > 9) {
        return None;
    }
    aes.with_encryptor(|encrypt| {
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
        encrypt(&mut state);
        // Q = T || [0]^((-t-b-1) mod 16) || [i]^1 || [NUM(B)]^b: all but its last block is the
        // same in every round, so the CBC-MAC state after it is computed once.
        let pad = (16 - (tweak.len() + b + 1) % 16) % 16;
        let mut q = Vec::with_capacity(tweak.len() + pad + 1 + b);
        q.extend_from_slice(tweak);
        q.resize(tweak.len() + pad, 0);
        let head = q.len() + 1 + b - 16;
        for block in q[..head].chunks(16) {
            absorb(encrypt, &mut state, block);
        }
        let mut last = [0u8; 16];
        last[..q.len() - head].copy_from_slice(&q[head..]);
        // Every value below is under 10^18 < 2^63, and a sum of two under 2^64: 64-bit
        // arithmetic but for NUM(S).
        let pow10 = |m: usize| 10u64.pow(m as u32);
        let round = |i: u8, feed: u64, m: usize| -> u64 {
            let mut block = last;
            block[15 - b] = i;
            block[16 - b..].copy_from_slice(&u128::from(feed).to_be_bytes()[16 - b..]);
            let mut r = state;
            absorb(encrypt, &mut r, &block);
            // y = NUM(S), S = R[..d] (d <= 12: no extra blocks); only y mod 10^m is needed.
            let y = r[..d].iter().fold(0u128, |acc, &byte| (acc << 8) | u128::from(byte));
            let modulus = pow10(m);
            if modulus < 1 << 32 {
                // In 32-bit limbs: each step's dividend stays below 2^64.
                let limbs = [(y >> 64) as u64, (y >> 32) as u64 & 0xffff_ffff, y as u64 & 0xffff_ffff];
                limbs.iter().fold(0u64, |r, &limb| ((r << 32) | limb) % modulus)
            } else {
                (y % u128::from(modulus)) as u64
            }
        };
        let num = |digits: &[u16]| digits.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d));
        let (mut a, mut bb) = (num(&x[..u]), num(&x[u..]));
        if decrypt {
            for i in (0..10u8).rev() {
                let m = if i % 2 == 0 { u } else { v };
                let modulus = pow10(m);
                let c = (bb + modulus - round(i, a, m)) % modulus;
                bb = a;
                a = c;
            }
        } else {
            for i in 0..10u8 {
                let m = if i % 2 == 0 { u } else { v };
                let c = (a + round(i, bb, m)) % pow10(m);
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
    })
    .flatten()
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
    if let &[m] = char.as_bytes() {
        // One ASCII mask character (any one-byte UTF-8 is ASCII): byte for byte.
        return String::from_utf8(mask_bytes(b, keep_first, keep_last, m, keep_separators, n)).ok();
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

/// `mask_ascii` with a one-byte mask character `m`; `n` is the number of letters and
/// digits of `b`, `keep_first + keep_last < n` or both are 0.
fn mask_bytes(b: &[u8], keep_first: usize, keep_last: usize, m: u8, keep_separators: bool, n: usize) -> Vec<u8> {
    let mut out = b.to_vec();
    let mut seen = 0;
    for c in out.iter_mut() {
        if c.is_ascii_alphanumeric() {
            if !(seen < keep_first || seen >= n - keep_last) {
                *c = m;
            }
            seen += 1;
        } else if !keep_separators {
            *c = m;
        }
    }
    out
}

/// `transforms.mask_text` on any text, given `str.isalnum` of each of its characters.
fn mask_chars(text: &str, alnum: &[bool], mut keep_first: usize, mut keep_last: usize, char: &str, keep_separators: bool) -> String {
    let n = alnum.iter().filter(|&&a| a).count();
    if keep_first.saturating_add(keep_last) >= n {
        keep_first = 0;
        keep_last = 0;
    }
    let mut out = String::with_capacity(text.len() + alnum.len() * char.len());
    if !keep_separators {
        let mut seen = 0;
        for (ch, &a) in text.chars().zip(alnum) {
            if a {
                if seen < keep_first || seen >= n - keep_last {
                    out.push(ch);
                } else {
                    out.push_str(char);
                }
                seen += 1;
            } else {
                out.push_str(char);
            }
        }
        return out;
    }
    // The head up to the keep_first-th letter or digit and the tail from the keep_last-th
    // from the end stay; letters and digits between are masked.
    let start = match keep_first {
        0 => 0,
        k => alnum.iter().enumerate().filter(|(_, &a)| a).nth(k - 1).map_or(0, |(i, _)| i + 1),
    };
    let end = match keep_last {
        0 => alnum.len(),
        k => alnum.iter().enumerate().rev().filter(|(_, &a)| a).nth(k - 1).map_or(alnum.len(), |(i, _)| i),
    };
    for (i, (ch, &a)) in text.chars().zip(alnum).enumerate() {
        if a && start <= i && i < end {
            out.push_str(char);
        } else {
            out.push(ch);
        }
    }
    out
}

// -- the plan executor ---------------------------------------------------------------------

/// What a step does natively when the value allows it; otherwise its Python function runs.
enum NativeOp {
    None,
    Suppress,
    /// `mask` of a string (without lone surrogates).
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
    /// Per segment, the key object of the first record that held it: decoders such as
    /// orjson hand out one object per key text, and a dict finds an identical key without
    /// comparing texts. Equal to the segment, so looking it up finds what the segment finds.
    keys: Vec<OnceLock<Py<PyString>>>,
    /// The prefix ids of `segs[..i]`, i = 1..segs.len(): the containers on the path.
    prefixes: Vec<usize>,
    /// The prefixes at or below this step's path: their containers change when it writes.
    forgets: Vec<usize>,
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
    /// How many distinct path prefixes (containers) the steps go through.
    n_prefixes: usize,
    /// Python's `str.isalnum`, and what it said of the characters outside ASCII seen so far.
    isalnum: Py<PyAny>,
    alnum: Mutex<FxHashMap<u32, bool>>,
}

const ALNUM_CACHE_LIMIT: usize = 65_536;

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

    /// The key to look segment `i` of `step` up with: the object learnt, else the segment.
    fn key<'a, 'py>(py: Python<'py>, step: &'a Step, i: usize) -> &'a Bound<'py, PyString> {
        step.keys[i].get().unwrap_or(&step.segs[i]).bind(py)
    }

    /// Learn the key object of `dict` equal to segment `i` of `step`, once.
    fn learn(py: Python<'_>, step: &Step, i: usize, dict: &Bound<'_, PyAny>) -> PyResult<()> {
        if step.keys[i].get().is_some() {
            return Ok(());
        }
        let Ok(d) = dict.cast_exact::<PyDict>() else { return Ok(()) };
        let seg = step.segs[i].bind(py);
        for key in d.keys() {
            if let Ok(k) = key.cast_exact::<PyString>() {
                if k.as_any().eq(seg)? {
                    let _ = step.keys[i].set(k.clone().unbind());
                    break;
                }
            }
        }
        Ok(())
    }

    /// `str.isalnum` of each character of `text`: ASCII by its class, the others by Python
    /// itself (its Unicode database), cached per code point.
    fn alnum_flags(&self, py: Python<'_>, text: &str) -> PyResult<Vec<bool>> {
        let mut cache = self.alnum.lock().map_err(|_| PyValueError::new_err("the executor's character cache is poisoned"))?;
        let mut buf = [0u8; 4];
        text.chars()
            .map(|ch| {
                if ch.is_ascii() {
                    return Ok(ch.is_ascii_alphanumeric());
                }
                if let Some(&a) = cache.get(&(ch as u32)) {
                    return Ok(a);
                }
                let a: bool = self.isalnum.bind(py).call1((PyString::new(py, ch.encode_utf8(&mut buf)),))?.extract()?;
                if cache.len() < ALNUM_CACHE_LIMIT {
                    cache.insert(ch as u32, a);
                }
                Ok(a)
            })
            .collect()
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
            NativeOp::Mask { keep_first, keep_last, char, keep_separators } => {
                let Ok(s) = value.cast_exact::<PyString>() else { return Ok(None) };
                // A string with lone surrogates goes to Python.
                let Ok(text) = s.to_str() else { return Ok(None) };
                let out = match mask_ascii(text, *keep_first, *keep_last, char, *keep_separators) {
                    Some(out) => out,
                    None => mask_chars(text, &self.alnum_flags(py, text)?, *keep_first, *keep_last, char, *keep_separators),
                };
                Some(PyString::new(py, &out).into_any())
            }
            NativeOp::Hash { mac, hex, length, prefix, normalize } => match value.cast_exact::<PyString>() {
                Ok(s) => match s.to_str() {
                    Ok(text) => {
                        let normalized;
                        let mut lowered = [0u8; 128];
                        let data = match normalize {
                            Normalize::None => text.as_bytes(),
                            _ if !text.is_ascii() => return Ok(None),
                            Normalize::Casefold => {
                                let stripped = py_strip(text.as_bytes());
                                match lowered.get_mut(..stripped.len()) {
                                    Some(buf) => {
                                        buf.copy_from_slice(stripped);
                                        buf.make_ascii_lowercase();
                                        &buf[..]
                                    }
                                    None => {
                                        normalized = stripped.to_ascii_lowercase();
                                        &normalized[..]
                                    }
                                }
                            }
                            Normalize::Digits => {
                                normalized = text.bytes().filter(u8::is_ascii_digit).collect::<Vec<u8>>();
                                &normalized[..]
                            }
                        };
                        let mut m = mac.clone();
                        m.update(data);
                        let mut buf = [0u8; 160];
                        let digest = m.finalize().into_bytes();
                        Some(match digest_text(&digest, *hex, *length, prefix, &mut buf) {
                            Some(text) => PyString::new(py, text).into_any(),
                            None => PyString::new(py, &encode_digest(&digest, *hex, *length, prefix)).into_any(),
                        })
                    }
                    Err(_) => None,
                },
                Err(_) => None,
            },
            NativeOp::Zip { keep, hipaa } => zip_prefix(value, *keep, *hipaa).map(|out| PyString::new(py, &out).into_any()),
            NativeOp::DateTrunc { year } => ascii_str(value).and_then(iso::parse).map(|(y, m, _)| {
                let mut out = String::with_capacity(7);
                push_year(&mut out, y);
                if !*year {
                    out.push('-');
                    push_digits(&mut out, m, 2);
                }
                PyString::new(py, &out).into_any()
            }),
            NativeOp::Number { age, width, cap } => generalize_number(py, value, *age, *width, *cap)?,
            NativeOp::Redact { engine, type_style, mask_char } => {
                let Ok(s) = value.cast_exact::<PyString>() else { return Ok(None) };
                // A string with lone surrogates goes to Python.
                let Ok(text) = s.to_str() else { return Ok(None) };
                if text.is_ascii() {
                    // ASCII: no normalisation, so the offsets are those of `text` itself.
                    let spans = engine.get().scan_ascii_spans(text)?;
                    if spans.is_empty() {
                        // Nothing to redact: the text itself (an exact, immutable str).
                        return Ok(Some(value.clone()));
                    }
                    Some(PyString::new(py, &redact_ascii(text, spans, *type_style, mask_char)).into_any())
                } else {
                    // Offsets in code points, as `scan_text` gives them.
                    let spans = engine.get().scan_spans(py, s)?;
                    let alnum = if *type_style || spans.is_empty() { Vec::new() } else { self.alnum_flags(py, text)? };
                    Some(PyString::new(py, &redact_chars(text, spans, *type_style, mask_char, &alnum)).into_any())
                }
            }
            NativeOp::Fpe { ff1, tweak, keep_first, keep_last, luhn_invalid } => {
                let text = if value.is_exact_instance_of::<PyInt>() {
                    match value.extract::<i64>() {
                        Ok(i) => i.to_string(),
                        Err(_) => return Ok(None),
                    }
                } else {
                    let Ok(s) = value.cast_exact::<PyString>() else { return Ok(None) };
                    let Ok(t) = s.to_str() else { return Ok(None) };
                    if t.is_ascii() {
                        t.to_owned()
                    } else {
                        // `fold_digits` of the characters it folds one by one; others: Python.
                        match fold_simple_digits(t) {
                            Some(folded) => folded,
                            None => return Ok(None),
                        }
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
                iso::add_days(y, m, d, days).map(|(y, m, d)| {
                    let mut out = String::with_capacity(text.len());
                    push_year(&mut out, y);
                    out.push('-');
                    push_digits(&mut out, m, 2);
                    out.push('-');
                    push_digits(&mut out, d, 2);
                    out.push_str(&text[10..]);
                    PyString::new(py, &out).into_any()
                })
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

/// `encode_digest` written into `out` (no allocation); None when it does not fit.
fn digest_text<'a>(digest: &[u8], hex: bool, length: Option<usize>, prefix: &str, out: &'a mut [u8]) -> Option<&'a str> {
    let mut buf = [0u8; 128];
    let body = digest_body(digest, hex, length, &mut buf);
    let p = prefix.len();
    let text = out.get_mut(..p + body.len())?;
    text[..p].copy_from_slice(prefix.as_bytes());
    text[p..].copy_from_slice(body);
    // A str and ASCII: always UTF-8.
    std::str::from_utf8(text).ok()
}

/// The hex or unpadded base64url text of `digest` in `buf` (as much as fits), cut to
/// `length`. Both encodings are ASCII: any length cuts between characters.
fn digest_body<'a>(digest: &[u8], hex: bool, length: Option<usize>, buf: &'a mut [u8; 128]) -> &'a [u8] {
    let n = if hex {
        for (pair, b) in buf.chunks_exact_mut(2).zip(digest) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        (2 * digest.len()).min(buf.len())
    } else {
        let mut n = 0;
        for chunk in digest.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                if n < buf.len() {
                    buf[n] = B64URL[((v >> (18 - 6 * i)) & 63) as usize];
                    n += 1;
                }
            }
        }
        n
    };
    &buf[..length.map_or(n, |l| l.min(n))]
}

fn encode_digest(digest: &[u8], hex: bool, length: Option<usize>, prefix: &str) -> String {
    let mut buf = [0u8; 128];
    let body = digest_body(digest, hex, length, &mut buf);
    let mut out = String::with_capacity(prefix.len() + body.len());
    out.push_str(prefix);
    out.push_str(std::str::from_utf8(body).unwrap_or_default());
    out
}

/// `f"{y:04d}"` for a year of `iso` (1..=9999), appended.
fn push_year(out: &mut String, y: i64) {
    push_digits(out, y as u32, 4);
}

/// `value` as exactly `width` decimal digits (zero-padded; `value` has no more), appended.
fn push_digits(out: &mut String, value: u32, width: u32) {
    for k in (0..width).rev() {
        out.push(char::from(b'0' + (value / 10u32.pow(k) % 10) as u8));
    }
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
        let mut paths: Vec<Vec<Vec<u8>>> = Vec::with_capacity(steps.len());
        let mut prefix_ids: std::collections::HashMap<Vec<Vec<u8>>, usize> = std::collections::HashMap::new();
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
            // Keys as UTF-8 with surrogates passed: a key may hold a lone surrogate.
            let texts: Vec<Vec<u8>> =
                segs.iter().map(|seg| Ok(seg.bind(py).call_method1("encode", ("utf-8", "surrogatepass"))?.cast_into::<PyBytes>()?.as_bytes().to_vec())).collect::<PyResult<_>>()?;
            let prefixes = (1..texts.len())
                .map(|i| {
                    let n = prefix_ids.len();
                    *prefix_ids.entry(texts[..i].to_vec()).or_insert(n)
                })
                .collect();
            paths.push(texts);
            let keys = segs.iter().map(|_| OnceLock::new()).collect();
            out.push(Step { segs, keys, prefixes, forgets: Vec::new(), op, call, subject });
        }
        for (step, path) in out.iter_mut().zip(&paths) {
            step.forgets = prefix_ids.iter().filter(|(prefix, _)| prefix.starts_with(path)).map(|(_, &id)| id).collect();
        }
        let builtins = py.import("builtins")?;
        let dict_type = builtins.getattr("dict")?.unbind();
        let isalnum = builtins.getattr("str")?.getattr("isalnum")?.unbind();
        Ok(PlanExecutor { steps: out, suppressed, fail, dict_type, n_prefixes: prefix_ids.len(), isalnum, alnum: Mutex::new(FxHashMap::default()) })
    }

    /// Apply the plan to one decoded record; returns the (copied where changed) record.
    fn apply<'py>(&self, py: Python<'py>, record: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let mut result = record.clone();
        let mut root_owned = false;
        // Per prefix of the steps' paths: the container there when this call made it (a
        // copy, changed in place by later steps). A step that writes a path forgets the
        // prefixes at and below it.
        let mut made: Vec<Option<Bound<'py, PyAny>>> = vec![None; self.n_prefixes];
        // The containers along the step's path, from the depth it starts at.
        let mut chain: Vec<Bound<'py, PyAny>> = Vec::with_capacity(4);
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
            // Start at the deepest container of the path this call made: everything above
            // it is a dict this call made too, holding the path (else it was forgotten).
            let mut depth = 0;
            let mut node = result.clone();
            for i in (1..step.segs.len()).rev() {
                if let Some(c) = &made[step.prefixes[i - 1]] {
                    depth = i;
                    node = c.clone();
                    break;
                }
            }
            chain.clear();
            for i in depth..step.segs.len() {
                if node.is_none() {
                    continue 'steps;
                }
                if !node.is_instance_of::<PyDict>() {
                    self.fail.bind(py).call1((si, i, &node))?;
                    return Err(PyValueError::new_err("fail() must raise"));
                }
                chain.push(node.clone());
                match Self::get(&node, Self::key(py, step, i))? {
                    None => continue 'steps,
                    Some(child) => {
                        Self::learn(py, step, i, &node)?;
                        node = child;
                    }
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
            // Copy-on-write down the chain: each container not made by this call is copied
            // and put in place of the original in its (made) parent.
            let mut parent: Option<Bound<'py, PyAny>> = None;
            for (j, container) in chain.iter().enumerate() {
                let i = depth + j;
                let mine = if i == 0 {
                    if !root_owned {
                        result = self.copy(container)?;
                        root_owned = true;
                    }
                    result.clone()
                } else if let Some(c) = &made[step.prefixes[i - 1]] {
                    c.clone()
                } else {
                    let copy = self.copy(container)?;
                    if let Some(p) = &parent {
                        p.cast::<PyDict>()?.set_item(Self::key(py, step, i - 1), &copy)?;
                    }
                    made[step.prefixes[i - 1]] = Some(copy.clone());
                    copy
                };
                parent = Some(mine);
            }
            let parent = parent.ok_or_else(|| PyValueError::new_err("plan path without a container"))?;
            let pd = parent.cast::<PyDict>()?;
            let last = step.segs.len() - 1;
            if r.is(self.suppressed.bind(py)) {
                pd.del_item(Self::key(py, step, last))?;
            } else {
                pd.set_item(Self::key(py, step, last), r)?;
            }
            for &p in &step.forgets {
                made[p] = None;
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
fn redact_ascii(text: &str, mut spans: Vec<(usize, usize, &str)>, type_style: bool, mask_char: &str) -> String {
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
            out.push_str(type_);
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

/// `transforms.redact_spans` on any text whose spans are in code points; `alnum` holds
/// `str.isalnum` of each character (needed for the mask style only).
fn redact_chars(text: &str, mut spans: Vec<(usize, usize, &str)>, type_style: bool, mask_char: &str, alnum: &[bool]) -> String {
    spans.sort();
    // Byte offset of each character, and of the end.
    let at: Vec<usize> = text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).collect();
    let n = at.len() - 1;
    let mut out = String::with_capacity(text.len() + 16);
    let mut pos = 0;
    for (start, end, type_) in spans {
        let start = start.max(pos);
        let end = end.min(n);
        if start >= end {
            continue;
        }
        out.push_str(&text[at[pos]..at[start]]);
        if type_style {
            out.push('[');
            out.push_str(type_);
            out.push(']');
        } else {
            for (i, c) in text[at[start]..at[end]].chars().enumerate() {
                if alnum[start + i] {
                    out.push_str(mask_char);
                } else {
                    out.push(c);
                }
            }
        }
        pos = end;
    }
    out.push_str(&text[at[pos]..]);
    out
}

/// `transforms.fold_digits` of text whose characters outside ASCII are all decimal
/// digits of the Arabic-Indic, extended Arabic-Indic and full-width forms, or zero-width
/// and bidi format characters: NFKC leaves those alone or maps the full-width digits to
/// ASCII (none combines with a neighbour), each digit becomes its ASCII digit and each
/// format character (category Cf) is dropped. None for any other character: Python folds.
fn fold_simple_digits(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let cp = c as u32;
        match cp {
            0..=0x7f => out.push(c),
            0x0660..=0x0669 => out.push(char::from(b'0' + (cp - 0x0660) as u8)),
            0x06f0..=0x06f9 => out.push(char::from(b'0' + (cp - 0x06f0) as u8)),
            0xff10..=0xff19 => out.push(char::from(b'0' + (cp - 0xff10) as u8)),
            0x200b..=0x200f | 0x2060 | 0xfeff => {}
            _ => return None,
        }
    }
    Some(out)
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
