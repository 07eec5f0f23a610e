//! The hot transforms of `trustzones/dlp/transforms.py`, with identical outputs: FF1
//! (NIST SP 800-38G, the `fpe` crate on RustCrypto `aes`), keyed HMAC-SHA-256 (`hmac` +
//! `sha2`) and `mask` on ASCII text. Checks whose failures have messages (lengths,
//! alphabets, keys) stay in Python, which calls these only with valid input.

use aes::{Aes128, Aes192, Aes256};
use fpe::ff1::{FlexibleNumeralString, FF1};
use hmac::{Hmac, KeyInit, Mac};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
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
}

fn fpe_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("FF1 failed: {e}"))
}

impl Ff1 {
    fn run(&self, numerals: Vec<u16>, tweak: &[u8], decrypt: bool) -> PyResult<Vec<u16>> {
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
        Ok(Ff1 { cipher, radix })
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
    /// `hash` without normalisation on a string.
    Hash { mac: Hmac<Sha256>, hex: bool, length: Option<usize>, prefix: String },
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

    fn run_native<'py>(&self, py: Python<'py>, op: &NativeOp, value: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
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
            NativeOp::Hash { mac, hex, length, prefix } => match value.cast_exact::<PyString>() {
                Ok(s) => match s.to_str() {
                    Ok(text) => {
                        let mut m = mac.clone();
                        m.update(text.as_bytes());
                        Some(PyString::new(py, &encode_digest(&m.finalize().into_bytes(), *hex, *length, prefix)).into_any())
                    }
                    Err(_) => None,
                },
                Err(_) => None,
            },
        })
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
    /// `("hash", key, hex, length, prefix)`.
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
            let subject = match &step.subject {
                Some(f) => f.bind(py).call1((record,))?,
                None => py.None().into_bound(py),
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
                match self.run_native(py, &step.op, &value)? {
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
