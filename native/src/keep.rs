//! The per-record walks of a flow's output, with identical results: `KeepChecked` of
//! `trustzones/flows/_paths.py` (cut a record down to the destination's fields and check
//! its leaves in the same walk) and the plain-path part of `Watermarker.mark` of
//! `trustzones/flows/_watermark.py`. Either one answers None / False for what it leaves to
//! Python (dict or list subclasses, keys that are not `str`, nesting deeper than
//! `MAX_NESTING`); the Python code then does the whole record, with the same result.

use hmac::{Hmac, KeyInit, Mac};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use pyo3::{ffi, Borrowed};
use rustc_hash::{FxHashMap, FxHashSet};
use sha2::Sha256;
use std::sync::Mutex;

/// `_MAX_DROPPED` of `_paths.py`: how many keys a shape remembers before it stops
/// remembering the ones that are not allowed (a record's unknown keys are input).
const MAX_DROPPED: usize = 256;
/// The nesting the native walk goes down to; below, Python walks the record (and raises
/// its RecursionError where it would have).
const MAX_NESTING: usize = 200;
/// A key remembered as not allowed.
const DROPPED: u32 = u32::MAX;
/// How many key objects a shape remembers (see `Shape::seen`).
const SEEN: usize = 32;

/// One schema path, resolved once (`_Shape` of `_paths.py`).
struct Shape {
    spath: String,
    depth: i64,
    deep: bool,
    clean: bool,
    /// The record's keys seen here (their UTF-8): the child shape, or `DROPPED`.
    keys: FxHashMap<Box<[u8]>, u32>,
    /// Key objects seen here, with their entries in `keys`, mostly in the order of the
    /// records (`SEEN` at most): records decoded alike share their key objects (orjson
    /// caches them), so most keys are found by identity, not by their text. Each is held,
    /// so its address is never that of another object.
    seen: Vec<(Py<PyAny>, u32)>,
    items: Option<u32>,
}

/// Why a walk stopped: Python's turn, or an error of `problem`.
enum Stop {
    Python,
    Err(PyErr),
}

impl From<PyErr> for Stop {
    fn from(e: PyErr) -> Self {
        Stop::Err(e)
    }
}

/// `PyDict_Next`: the entry of `d` at `pos`, borrowed from `d`, then moves `pos` on. Only
/// while no Python code runs (which could change `d`): `to_owned` them to hold them longer.
fn next_entry<'a, 'py>(d: &'a Bound<'py, PyDict>, pos: &mut ffi::Py_ssize_t) -> Option<(Borrowed<'a, 'py, PyAny>, Borrowed<'a, 'py, PyAny>)> {
    let (mut k, mut v) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: `d` is a dict, held; PyDict_Next gives borrowed references, not null when it
    // gives any.
    unsafe {
        if ffi::PyDict_Next(d.as_ptr(), pos, &mut k, &mut v) == 0 {
            return None;
        }
        Some((Borrowed::from_ptr(d.py(), k), Borrowed::from_ptr(d.py(), v)))
    }
}

/// Python's error for a dict whose size changed while it was iterated (the walk then stops,
/// as Python's iteration does, where pyo3's dict iterator would panic).
fn unchanged(d: &Bound<'_, PyDict>, size: usize) -> Result<(), Stop> {
    if d.len() == size {
        return Ok(());
    }
    Err(Stop::Err(PyRuntimeError::new_err("dictionary changed size during iteration")))
}

/// Python's `tv is str or tv is int or tv is float or tv is bool or v is None`.
fn is_leaf(v: &Bound<'_, PyAny>) -> bool {
    v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_exact_instance_of::<PyFloat>()
        || v.is_exact_instance_of::<PyBool>()
        || v.is_none()
}

/// `KeepChecked(allowed, problem, limit)` of `_paths.py`: `walker.keep(doc, problem,
/// answers)` is `(keep_only(doc, allowed), leaves_ok(...))`, or None when Python must walk
/// `doc`. `answers` is `KeepChecked._answers`, `problem(spath) is None` per schema path
/// asked about, shared with the Python walk. (Neither is held here: `problem` may hold
/// the `KeepChecked`, and this class takes no part in Python's garbage collection.)
#[pyclass(module = "trustzones_native", frozen)]
pub struct KeepWalker {
    allowed: FxHashSet<String>,
    limit: i64,
    /// The shapes, the root first, and the walk's scratch space: locked for a walk (a walk
    /// that finds it locked, from another thread while `problem` runs, leaves the record
    /// to Python).
    state: Mutex<(Vec<Shape>, Vec<u32>)>,
}

/// One call of `KeepWalker.keep`.
struct Walk<'a, 'py> {
    py: Python<'py>,
    walker: &'a KeepWalker,
    problem: &'a Bound<'py, PyAny>,
    answers: &'a Bound<'py, PyDict>,
    shapes: &'a mut Vec<Shape>,
    /// The children of the dicts being walked (see `dict_known`), a stack.
    scratch: &'a mut Vec<u32>,
    bad: bool,
}

impl<'py> Walk<'_, 'py> {
    /// `KeepChecked._clean`: `problem(spath) is None`, asked once.
    fn clean(&self, spath: &str) -> PyResult<bool> {
        let key = PyString::new(self.py, spath);
        if let Some(answer) = self.answers.get_item(&key)? {
            return answer.is_truthy();
        }
        let answer = self.problem.call1((&key,))?.is_none();
        self.answers.set_item(key, answer)?;
        Ok(answer)
    }

    /// A new kept shape (`KeepChecked._shape`).
    fn shape(&mut self, spath: String, depth: i64) -> PyResult<u32> {
        let clean = self.clean(&spath)?;
        let at = u32::try_from(self.shapes.len()).map_err(|_| PyValueError::new_err("too many schema paths"))?;
        let deep = depth > self.walker.limit;
        self.shapes.push(Shape { spath, depth, deep, clean, keys: FxHashMap::default(), seen: Vec::new(), items: None });
        Ok(at)
    }

    /// The child of shape `at` for `key`, resolved and remembered (`KeepChecked._key`).
    fn key(&mut self, at: u32, key: &str) -> PyResult<u32> {
        let parent = &self.shapes[at as usize];
        let p = if parent.spath.is_empty() { key.to_owned() } else { format!("{}.{key}", parent.spath) };
        let depth = parent.depth + 1;
        let child = if self.walker.allowed.contains(&p) { self.shape(p, depth)? } else { DROPPED };
        let keys = &mut self.shapes[at as usize].keys;
        if child != DROPPED || keys.len() < MAX_DROPPED {
            keys.insert(key.as_bytes().into(), child);
        }
        Ok(child)
    }

    /// The child of shape `at` for the record's key `k`, at position `i` of its dict;
    /// `None` when not resolved yet.
    fn known(&mut self, at: u32, i: usize, k: &Bound<'py, PyAny>) -> Result<Option<u32>, Stop> {
        let shape = &mut self.shapes[at as usize];
        let p = k.as_ptr();
        // Where it was in the first records, else anywhere among those seen.
        if let Some((key, c)) = shape.seen.get(i) {
            if key.as_ptr() == p {
                return Ok(Some(*c));
            }
        }
        if let Some((_, c)) = shape.seen.iter().find(|(key, _)| key.as_ptr() == p) {
            return Ok(Some(*c));
        }
        let Ok(key) = k.cast_exact::<PyString>() else { return Err(Stop::Python) };
        // A key with lone surrogates: no allowed path (as kept here) holds one.
        let Ok(text) = key.to_str() else { return Err(Stop::Python) };
        let found = shape.keys.get(text.as_bytes()).copied();
        if let Some(c) = found {
            // Once full, the latest key object at this position takes the place.
            if shape.seen.len() < SEEN {
                shape.seen.push((k.clone().unbind(), c));
            } else if i < SEEN {
                shape.seen[i] = (k.clone().unbind(), c);
            }
        }
        Ok(found)
    }

    /// Flag a leaf at shape `c` that is too deep or has a problem.
    fn leaf(&mut self, c: u32) {
        let s = &self.shapes[c as usize];
        self.bad |= s.deep || !s.clean;
    }

    fn walk(&mut self, node: &Bound<'py, PyAny>, at: u32, nesting: usize) -> Result<Bound<'py, PyAny>, Stop> {
        if nesting > MAX_NESTING {
            return Err(Stop::Python);
        }
        let s = &self.shapes[at as usize];
        let (clean, named) = (s.clean, !s.spath.is_empty());
        self.bad |= s.deep;
        if let Ok(d) = node.cast_exact::<PyDict>() {
            let out = match self.dict_known(d, at, nesting)? {
                Some(out) => out,
                None => self.dict(d, at, nesting)?,
            };
            self.bad |= out.is_empty() && named && !clean;
            return Ok(out.into_any());
        }
        if let Ok(l) = node.cast_exact::<PyList>() {
            let c = match self.shapes[at as usize].items {
                Some(c) => c,
                None => {
                    let s = &self.shapes[at as usize];
                    let (spath, depth) = (format!("{}[*]", s.spath), s.depth + 1);
                    let c = self.shape(spath, depth)?;
                    self.shapes[at as usize].items = Some(c);
                    c
                }
            };
            // A copy (every item is kept), its containers then replaced by their walks.
            let out = l.get_slice(0, l.len());
            for (i, v) in l.iter().enumerate() {
                if is_leaf(&v) {
                    self.leaf(c);
                } else {
                    out.set_item(i, self.walk(&v, c, nesting + 1)?)?;
                }
            }
            self.bad |= out.is_empty() && named && !clean;
            return Ok(out.into_any());
        }
        if node.is_instance_of::<PyDict>() || node.is_instance_of::<PyList>() {
            return Err(Stop::Python);
        }
        self.bad |= !clean; // a leaf where a container was expected
        Ok(node.clone())
    }

    /// The walk of a dict whose every key was seen here before (None when one was not:
    /// `dict` then resolves them, in the order Python asks `problem`). With every key
    /// kept, the output is a copy of the dict (far cheaper than inserting its keys one by
    /// one) whose containers are then replaced by their walks.
    fn dict_known(&mut self, d: &Bound<'py, PyDict>, at: u32, nesting: usize) -> Result<Option<Bound<'py, PyDict>>, Stop> {
        let start = self.scratch.len();
        let (mut dropped, mut nested) = (false, false);
        // No Python code runs in this loop: the entries borrowed from `d` stay valid.
        let (mut pos, mut i) = (0, 0);
        while let Some((k, v)) = next_entry(d, &mut pos) {
            let Some(c) = self.known(at, i, &k)? else {
                self.scratch.truncate(start);
                return Ok(None);
            };
            self.scratch.push(c);
            i += 1;
            if c == DROPPED {
                dropped = true;
            } else if is_leaf(&v) {
                self.leaf(c);
            } else {
                nested = true;
            }
        }
        let out = if dropped { PyDict::new(self.py) } else { d.copy()? };
        if dropped || nested {
            let size = d.len();
            let (mut pos, mut i) = (0, start);
            loop {
                unchanged(d, size)?; // a walk below may have run `problem` (see `dict`)
                let Some((k, v)) = next_entry(d, &mut pos) else { break };
                let Some(&c) = self.scratch.get(i) else { return Err(Stop::Python) };
                i += 1;
                if c == DROPPED {
                    continue;
                }
                if !is_leaf(&v) {
                    // The walk may run Python code (`problem`): hold the entry.
                    let (k, v) = (k.to_owned(), v.to_owned());
                    out.set_item(k, self.walk(&v, c, nesting + 1)?)?;
                } else if dropped {
                    out.set_item(k, v)?;
                }
            }
        }
        self.scratch.truncate(start);
        Ok(Some(out))
    }

    /// The walk of a dict, resolving its keys on the way (`KeepChecked._walk`).
    fn dict(&mut self, d: &Bound<'py, PyDict>, at: u32, nesting: usize) -> Result<Bound<'py, PyDict>, Stop> {
        let out = PyDict::new(self.py);
        let size = d.len();
        let (mut pos, mut i) = (0, 0);
        loop {
            // `problem` (Python) runs below and may change `d`: its size is checked before each
            // step, as Python's iteration checks it, and each entry is held while it is used.
            unchanged(d, size)?;
            let Some((k, v)) = next_entry(d, &mut pos) else { break };
            let (k, v) = (k.to_owned(), v.to_owned());
            let c = match self.known(at, i, &k)? {
                Some(c) => c,
                // `known` took it as UTF-8 already.
                None => self.key(at, k.cast_exact::<PyString>().map_err(PyErr::from)?.to_str()?)?,
            };
            i += 1;
            if c == DROPPED {
                continue;
            }
            if is_leaf(&v) {
                self.leaf(c);
                out.set_item(k, v)?;
            } else {
                let w = self.walk(&v, c, nesting + 1)?;
                out.set_item(k, w)?;
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl KeepWalker {
    /// `allowed` holds `str` only; those with lone surrogates can match no path built here
    /// (keys with them go to Python) and are left out.
    #[new]
    fn new(allowed: &Bound<'_, PyAny>, limit: i64) -> PyResult<Self> {
        let mut paths = FxHashSet::default();
        for p in allowed.try_iter()? {
            let p = p?;
            if let Ok(text) = p.cast_exact::<PyString>()?.to_str() {
                paths.insert(text.to_owned());
            }
        }
        Ok(KeepWalker { allowed: paths, limit, state: Mutex::new((Vec::new(), Vec::new())) })
    }

    /// `(out, fits)`, or None when Python must walk `doc`.
    fn keep<'py>(&self, py: Python<'py>, doc: &Bound<'py, PyAny>, problem: &Bound<'py, PyAny>, answers: &Bound<'py, PyDict>) -> PyResult<Option<(Bound<'py, PyAny>, bool)>> {
        let Ok(mut state) = self.state.try_lock() else { return Ok(None) };
        let (shapes, scratch) = &mut *state;
        scratch.clear(); // after an error or a hand-back half way
        let mut walk = Walk { py, walker: self, problem, answers, shapes, scratch, bad: false };
        if walk.shapes.is_empty() {
            walk.shape(String::new(), 1)?;
        }
        match walk.walk(doc, 0, 0) {
            Ok(out) => Ok(Some((out, !walk.bad))),
            Err(Stop::Python) => Ok(None),
            Err(Stop::Err(e)) => Err(e),
        }
    }
}

/// The plain (dotted, no `[*]`) paths of `Watermarker.mark`, with its HMAC key.
#[pyclass(module = "trustzones_native", frozen)]
pub struct PlainMarker {
    mac: Hmac<Sha256>,
    paths: Vec<Vec<Py<PyString>>>,
}

/// Whether `b` matches `^[0-9a-f]{12,}$` as Python's `re.match` does (`$` also matches
/// before a final newline).
fn is_hex_mark(b: &[u8]) -> bool {
    let digits = b.strip_suffix(b"\n").unwrap_or(b);
    digits.len() >= 12 && digits.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[pymethods]
impl PlainMarker {
    #[new]
    fn new(key: &[u8], paths: Vec<Vec<Py<PyString>>>) -> PyResult<Self> {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|e| PyValueError::new_err(format!("HMAC key: {e}")))?;
        Ok(PlainMarker { mac, paths })
    }

    /// Mark the values at the paths of `doc` in place; False when Python must do it (a dict
    /// or str subclass on a path; marking again what was marked here changes nothing: the
    /// tag is that of the unchanged body).
    fn mark(&self, py: Python<'_>, doc: &Bound<'_, PyAny>) -> PyResult<bool> {
        'paths: for keys in &self.paths {
            let Some((last, head)) = keys.split_last() else { continue };
            let mut node = doc.clone();
            for k in head {
                let Ok(d) = node.cast_exact::<PyDict>() else {
                    if node.is_instance_of::<PyDict>() {
                        return Ok(false);
                    }
                    continue 'paths;
                };
                match d.get_item(k.bind(py))? {
                    Some(child) => node = child,
                    None => continue 'paths,
                }
            }
            let Ok(d) = node.cast_exact::<PyDict>() else {
                if node.is_instance_of::<PyDict>() {
                    return Ok(false);
                }
                continue;
            };
            let Some(v) = d.get_item(last.bind(py))? else { continue };
            let Ok(s) = v.cast_exact::<PyString>() else {
                if v.is_instance_of::<PyString>() {
                    return Ok(false);
                }
                continue;
            };
            // Not UTF-8 (lone surrogates): not hex either.
            let Ok(text) = s.to_str() else { continue };
            let b = text.as_bytes();
            if !is_hex_mark(b) {
                continue;
            }
            // Python's `v[:-4]`: the text is ASCII, so characters are bytes.
            let body = &b[..b.len() - 4];
            let mut mac = self.mac.clone();
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            let mut marked = Vec::with_capacity(b.len());
            marked.extend_from_slice(body);
            for &byte in &tag[..2] {
                marked.push(HEX[usize::from(byte >> 4)]);
                marked.push(HEX[usize::from(byte & 15)]);
            }
            // ASCII: always UTF-8.
            let marked = std::str::from_utf8(&marked).map_err(|e| PyValueError::new_err(e.to_string()))?;
            d.set_item(last.bind(py), PyString::new(py, marked))?;
        }
        Ok(true)
    }
}
