//! The native scanning engine: `trustzones.dlp.scanner` in Rust, from the walk of the
//! decoded record to the findings.
//!
//! 1. Walk the Python objects (dicts, lists, strings, numbers) and copy every scannable
//!    text (values, and keys when keys are scanned), normalised to ASCII, into one buffer,
//!    fields separated by NUL (no rule matches NUL), with each field's path node and
//!    field-name context. Numbers are written as Python writes them (`str(int)`,
//!    `repr(float)`) without calling Python. A dict member whose key object was met
//!    before and whose value is a leaf is read through borrowed references, without
//!    touching reference counts or running Python code (`walk_dict`).
//! 2. One lazy-DFA pass (`regex-automata`, all rules' prefilters and the keyword patterns
//!    as one multi-pattern automaton, overlapping matches) over the buffer says which
//!    pattern fired in which field: the role Hyperscan plays in the Hyperscan engine. The
//!    walk of a DFA waits on its table loads, so a buffer of several fields is cut at field
//!    boundaries into three runs walked in step (no pattern matches NUL).
//! 3. In those fields only, each fired rule's own expression (leftmost-first, the match
//!    Python's backtracking `re` finds; a bare forward/reverse lazy DFA per rule with its
//!    cache in the scratch, the `regex` crate as fallback) gives the candidates;
//!    context-only rules run in fields with context or a keyword; validators confirm;
//!    overlaps are resolved.
//! 4. Offsets go back to the original strings and paths are rendered, hiding a key that
//!    holds a finding, as `_paths.render_path` does.

use std::fmt::Write as _;
use std::sync::Mutex;

use pyo3::exceptions::{PyRecursionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use regex::bytes::{Regex, RegexBuilder};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::regex::{Cache as HybridCache, Regex as HybridRegex};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use rustc_hash::FxHashMap;

use crate::context::{key_context, NOT_IP};
use crate::validators::{Keywords, Span, Validator};

const NONE: u32 = u32::MAX;
/// The length of a key of `Collected::new_ctx` that is one of `Scratch::infos`.
const KNOWN: u32 = u32::MAX;
/// Python recurses twice per level of nesting and stops near 1000 frames; a record this
/// deep is refused rather than risking the native stack.
const MAX_DEPTH: usize = 2000;
const NORM_CACHE_LIMIT: usize = 65_536;
/// The searches `Engine::fire_lanes` runs in step.
const LANES: usize = 3;
const CTX_CACHE_LIMIT: usize = 16_384;

struct Rule {
    type_bit: u32,
    type_name: Py<PyString>,
    type_str: String,
    regex: Regex,
    /// The same expression as a bare lazy-DFA regex (forward for the end, reverse for the
    /// start: the leftmost-first match `regex` finds), searched with a cache of the
    /// caller's scratch: no pool, no prefilter start-up on the short texts of a record.
    fast: HybridRegex,
    validator: Validator,
    keywords: bool,
    is_ip: bool,
}

#[derive(Clone, Copy)]
enum Pat {
    Rule(usize),
    Keyword(u32),
}

/// Per field of a search: the patterns that fired in it (bit `i`: pattern `i`), and where
/// the last match of a rule's pattern (not a keyword's) ended (offset in the searched text,
/// 0 when none did).
type Fired = (u64, usize);

/// A candidate: confidence, start, end (normalised offsets), rule index.
type Cand = (f64, usize, usize, usize);

/// What `Engine::detect` works with: the caches of the automata and buffers kept for
/// their capacity.
struct Det {
    dfa: Cache,
    /// One cache per rule for `Rule::fast`.
    rx: Vec<HybridCache>,
    /// Per field, the patterns that fired in it and the end of the last match of a rule's
    /// pattern there.
    fired: Vec<Fired>,
    /// A validator's accepted spans.
    spans: Vec<Span>,
    /// The candidates of one field.
    cands: Vec<Cand>,
    /// The output: the candidates kept, as (field, candidate), in field order and in text
    /// order within a field.
    found: Vec<(u32, Cand)>,
}

/// Per-thread working memory, pooled: no lock is held while Python code runs.
struct Scratch {
    det: Det,
    norm: FxHashMap<u32, u8>,
    /// ASCII keys seen before: their context, and the inherited contexts under which the
    /// key itself was scanned and held nothing (it need not be scanned again there). A key
    /// is only added once it is known to hold no finding (or keys are not scanned), so a
    /// sensitive key is never kept here.
    ctx: FxHashMap<Box<[u8]>, u32>,
    /// The `KeyInfo` of each key of `ctx`, by its index there.
    infos: Vec<KeyInfo>,
    /// The text of each key of `ctx`, by its index there.
    key_text: Vec<Box<[u8]>>,
    /// The same keys by the address of a `str` object that holds one (kept alive here, so
    /// the address names that text): decoders such as orjson hand out one object per key,
    /// and a pointer is cheaper to look up than the text.
    by_ptr: FxHashMap<usize, (Py<PyString>, u32)>,
    /// Buffers of the last batch, kept for their capacity.
    col: Collected,
}

#[derive(Clone, Copy)]
struct KeyInfo {
    ctx: u32,
    clean: [u32; 4],
    n_clean: u8,
}

impl KeyInfo {
    fn is_clean(&self, inherited: u32) -> bool {
        self.clean[..self.n_clean as usize].contains(&inherited)
    }
}

enum Seg {
    Key { start: u32, len: u32, pos: u32 },
    /// A key known by its `str` object (`Scratch::by_ptr`): its text is `key_text[info]`.
    Known { info: u32, pos: u32 },
    /// A key that is not valid UTF-8 (lone surrogates): rendered by Python.
    OddKey { idx: u32, pos: u32 },
    Index(u32),
}

struct Node {
    parent: u32,
    seg: Seg,
}

/// A field's place in the record (its text, length and context are in
/// `Collected::spans`).
struct Field {
    node: u32,
    rec: u32,
    is_key: bool,
    imap: u32,
}

/// The texts of some records, in walk order.
#[derive(Default)]
struct Collected {
    big: Vec<u8>,
    fields: Vec<Field>,
    /// Per field: start, length and context, as `Engine::detect` takes them.
    spans: Vec<(usize, usize, u32)>,
    nodes: Vec<Node>,
    keys: Vec<u8>,
    odd_keys: Vec<Py<PyAny>>,
    imaps: Vec<Vec<u32>>,
    /// Keys learnt in this batch: (start, len in `keys`, context, inherited context,
    /// index of the key's own field or NONE); for a key of `Scratch::infos`, start is
    /// its index there and len is `KNOWN`.
    new_ctx: Vec<(u32, u32, u32, u32, u32)>,
}

impl Collected {
    fn clear(&mut self) {
        // The buffers are kept for their capacity: wipe the texts they held first.
        self.big.fill(0);
        self.keys.fill(0);
        self.big.clear();
        self.fields.clear();
        self.spans.clear();
        self.nodes.clear();
        self.keys.clear();
        self.odd_keys.clear();
        self.imaps.clear();
        self.new_ctx.clear();
    }
}

#[pyclass(module = "trustzones_native", frozen)]
pub struct Engine {
    rules: Vec<Rule>,
    pats: Vec<Pat>,
    /// The patterns of `pats` that are rules' (bit `i`: pattern `i`).
    rule_pats: u64,
    dfa: DFA,
    context_rules: Vec<usize>,
    /// No pattern of `dfa` consumes NUL: `fire` may split the text at fields.
    lanes: bool,
    kw: Keywords,
    type_names: Vec<String>,
    min_confidence: f64,
    scan_keys: bool,
    /// Boxed: taking and giving back moves a pointer, not the caches.
    #[allow(clippy::vec_box)]
    scratch: Mutex<Vec<Box<Scratch>>>,
    finding: Py<PyAny>,
    tuple_new: Py<PyAny>,
    /// `finding` is a tuple subclass with no extra storage (a NamedTuple): instances are
    /// allocated and filled directly, as `tuple.__new__(finding, items)` does.
    direct: bool,
    map_char: Py<PyAny>,
    normalize: Py<PyAny>,
    field_context: Py<PyAny>,
    dumps: Py<PyAny>,
    builtins: [Py<PyAny>; 5],
    empty: Py<PyString>,
}

fn build_fast(rx: &str) -> PyResult<HybridRegex> {
    HybridRegex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().utf8(false).which_captures(thompson::WhichCaptures::None))
        .dfa(DFA::config().minimum_cache_clear_count(None))
        .build(rx)
        .map_err(|e| PyValueError::new_err(format!("native engine cannot compile {rx:?}: {e}")))
}

fn build(rx: &str, caseless: bool) -> PyResult<Regex> {
    RegexBuilder::new(rx)
        .unicode(false)
        .case_insensitive(caseless)
        .size_limit(64 << 20)
        .build()
        .map_err(|e| PyValueError::new_err(format!("native engine cannot compile {rx:?}: {e}")))
}

impl Engine {
    fn bit_of(&self, name: &str) -> Option<u32> {
        if name == "!IP_ADDRESS" {
            return Some(NOT_IP);
        }
        self.type_names.iter().position(|t| t == name).map(|i| 1 << i)
    }

    fn take_scratch(&self) -> Box<Scratch> {
        let got = self.scratch.lock().ok().and_then(|mut v| v.pop());
        got.unwrap_or_else(|| {
            Box::new(Scratch {
                det: Det {
                    dfa: self.dfa.create_cache(),
                    rx: self.rules.iter().map(|r| r.fast.create_cache()).collect(),
                    fired: Vec::new(),
                    spans: Vec::new(),
                    cands: Vec::new(),
                    found: Vec::new(),
                },
                norm: FxHashMap::default(),
                ctx: FxHashMap::default(),
                infos: Vec::new(),
                key_text: Vec::new(),
                by_ptr: FxHashMap::default(),
                col: Collected::default(),
            })
        })
    }

    fn give_scratch(&self, mut s: Box<Scratch>) {
        s.col.clear();
        s.det.found.clear();
        if s.col.big.capacity() > 8 << 20 {
            s.col = Collected::default();
        }
        if let Ok(mut v) = self.scratch.lock() {
            if v.len() < 64 {
                v.push(s);
            }
        }
    }

    fn ctx_from_names(&self, names: &Bound<'_, PyAny>) -> PyResult<u32> {
        let mut ctx = 0;
        for name in names.try_iter()? {
            let name = name?;
            if let Some(bit) = self.bit_of(name.cast::<PyString>()?.to_str()?) {
                ctx |= bit;
            }
        }
        Ok(ctx)
    }

    // -- normalisation ----------------------------------------------------------------

    /// Append the ASCII form of `text` to `big` (see `_normalize.py`); returns the offset
    /// map when characters were removed. Characters outside ASCII are mapped by Python's
    /// own `_map_char` (its Unicode database), cached per code point.
    fn push_text(&self, py: Python<'_>, s: &str, big: &mut Vec<u8>, norm: &mut FxHashMap<u32, u8>) -> PyResult<Option<Vec<u32>>> {
        let bytes = s.as_bytes();
        if bytes.is_ascii() {
            big.extend_from_slice(bytes);
            return Ok(None);
        }
        let mut imap = Vec::with_capacity(bytes.len());
        let mut removed = false;
        for (ci, ch) in s.chars().enumerate() {
            let b = if ch.is_ascii() {
                ch as u8
            } else if let Some(&b) = norm.get(&(ch as u32)) {
                b
            } else {
                let mapped = self.map_char.bind(py).call1((ch as u32,))?;
                let mapped = mapped.cast::<PyString>()?.to_str()?;
                let b = match mapped.as_bytes() {
                    [] => 0,
                    [b] if b.is_ascii() && *b != 0 => *b,
                    _ => return Err(PyValueError::new_err("normalisation must map a character to at most one ASCII character")),
                };
                if norm.len() < NORM_CACHE_LIMIT {
                    norm.insert(ch as u32, b);
                }
                b
            };
            if b == 0 {
                removed = true;
                continue;
            }
            big.push(b);
            imap.push(ci as u32);
        }
        Ok(removed.then_some(imap))
    }

    /// A string that is not valid UTF-8 (lone surrogates): Python's `normalize` does it.
    fn push_odd_text(&self, py: Python<'_>, text: &Bound<'_, PyAny>, big: &mut Vec<u8>) -> PyResult<Option<Vec<u32>>> {
        let got = self.normalize.bind(py).call1((text,))?;
        let (norm, imap): (Bound<'_, PyString>, Option<Vec<u32>>) = got.extract()?;
        big.extend_from_slice(norm.to_str()?.as_bytes());
        Ok(imap)
    }

    // -- the walk -----------------------------------------------------------------------

    fn add_field(&self, py: Python<'_>, c: &mut Collected, sc: &mut Scratch, text: &Bound<'_, PyString>, node: u32, ctx: u32, rec: u32, is_key: bool) -> PyResult<()> {
        let start = c.big.len();
        let imap = match text.to_str() {
            Ok(s) => self.push_text(py, s, &mut c.big, &mut sc.norm)?,
            Err(_) => self.push_odd_text(py, text.as_any(), &mut c.big)?,
        };
        let imap = match imap {
            Some(m) => {
                c.imaps.push(m);
                (c.imaps.len() - 1) as u32
            }
            None => NONE,
        };
        let len = c.big.len() - start;
        c.fields.push(Field { node, rec, is_key, imap });
        c.spans.push((start, len, ctx));
        c.big.push(0);
        Ok(())
    }

    fn add_ascii_field(c: &mut Collected, text: &[u8], node: u32, ctx: u32, rec: u32, is_key: bool) {
        let start = c.big.len();
        c.big.extend_from_slice(text);
        c.fields.push(Field { node, rec, is_key, imap: NONE });
        c.spans.push((start, text.len(), ctx));
        c.big.push(0);
    }

    /// The members of a dict. The entries are read with `PyDict_Next` (borrowed
    /// references): a member whose key is a `str` object met before (`Scratch::by_ptr`)
    /// and whose value is a string, a number, a bool or None is handled without running
    /// Python code, so nothing can change the dict meanwhile; every other member holds
    /// strong references to its key and value before anything else (`walk_member`).
    fn walk_dict(&self, py: Python<'_>, c: &mut Collected, sc: &mut Scratch, d: &Bound<'_, PyDict>, node: u32, ctx: u32, rec: u32, depth: usize) -> PyResult<()> {
        let inherited = ctx & !NOT_IP;
        let dp = d.as_ptr();
        // SAFETY: `d` is a dict held by the caller; `PyDict_Next` hands out borrowed
        // references valid until the dict changes, which only Python code run below could
        // do: such code runs only in `walk_member`/`walk`, after they took their own
        // references, and the size check below stops the loop if it changed the dict.
        let size = unsafe { pyo3::ffi::PyDict_Size(dp) };
        let str_type = std::ptr::addr_of_mut!(pyo3::ffi::PyUnicode_Type);
        let mut at: pyo3::ffi::Py_ssize_t = 0;
        let mut kp: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
        let mut vp: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
        let mut pos = 0u32;
        while unsafe { pyo3::ffi::PyDict_Next(dp, &mut at, &mut kp, &mut vp) } != 0 {
            let known = if unsafe { pyo3::ffi::Py_TYPE(kp) } == str_type { sc.by_ptr.get(&(kp as usize)).map(|&(_, i)| i) } else { None };
            match known {
                Some(i) => {
                    let info = sc.infos[i as usize];
                    let scan = self.scan_keys && !info.is_clean(inherited);
                    c.nodes.push(Node { parent: node, seg: Seg::Known { info: i, pos } });
                    let member = (c.nodes.len() - 1) as u32;
                    if scan {
                        c.new_ctx.push((i, KNOWN, info.ctx, inherited, c.fields.len() as u32));
                        Self::add_ascii_field(c, &sc.key_text[i as usize], member, inherited, rec, true);
                    }
                    self.walk_value(py, c, sc, vp, member, inherited | info.ctx, rec, depth + 1)?;
                }
                None => {
                    // SAFETY: borrowed references from `PyDict_Next`, made strong here.
                    let (k, v) = unsafe { (Bound::from_borrowed_ptr(py, kp), Bound::from_borrowed_ptr(py, vp)) };
                    self.walk_member(py, c, sc, k, &v, pos, node, inherited, rec, depth)?;
                }
            }
            if unsafe { pyo3::ffi::PyDict_Size(dp) } != size {
                return Err(pyo3::exceptions::PyRuntimeError::new_err("dictionary changed size during iteration"));
            }
            pos += 1;
        }
        Ok(())
    }

    /// One member of a dict whose key is not known by its object (see `walk_dict`).
    #[allow(clippy::too_many_arguments)]
    fn walk_member(&self, py: Python<'_>, c: &mut Collected, sc: &mut Scratch, k: Bound<'_, PyAny>, v: &Bound<'_, PyAny>, pos: u32, node: u32, inherited: u32, rec: u32, depth: usize) -> PyResult<()> {
        let key = if k.is_exact_instance_of::<PyString>() {
            k.cast_into::<PyString>()?
        } else {
            self.builtins[0].bind(py).call1((k,))?.cast_into::<PyString>()?
        };
        let (seg, kctx, scan) = match key.to_str() {
            Ok(s) => {
                let start = c.keys.len() as u32;
                let kb = s.as_bytes();
                c.keys.extend_from_slice(kb);
                let ptr = key.as_ptr() as usize;
                let known = match sc.by_ptr.get(&ptr) {
                    Some(&(_, i)) => Some(i),
                    None if kb.is_ascii() => {
                        let i = sc.ctx.get(kb).copied();
                        if let (Some(i), true) = (i, sc.by_ptr.len() < CTX_CACHE_LIMIT) {
                            sc.by_ptr.insert(ptr, (key.clone().unbind(), i));
                        }
                        i
                    }
                    None => None,
                };
                let (kctx, scan) = if !kb.is_ascii() {
                    (self.python_context(py, key.as_any())?, self.scan_keys)
                } else if let Some(info) = known.map(|i| sc.infos[i as usize]) {
                    let scan = self.scan_keys && !info.is_clean(inherited);
                    if scan {
                        c.new_ctx.push((start, kb.len() as u32, info.ctx, inherited, c.fields.len() as u32));
                    }
                    (info.ctx, scan)
                } else {
                    let kctx = key_context(kb, &|t| self.bit_of(t));
                    // The key's own field is the next one when keys are scanned.
                    let field = if self.scan_keys { c.fields.len() as u32 } else { NONE };
                    c.new_ctx.push((start, kb.len() as u32, kctx, inherited, field));
                    (kctx, self.scan_keys)
                };
                (Seg::Key { start, len: kb.len() as u32, pos }, kctx, scan)
            }
            Err(_) => {
                c.odd_keys.push(key.clone().into_any().unbind());
                let kctx = self.python_context(py, key.as_any())?;
                (Seg::OddKey { idx: (c.odd_keys.len() - 1) as u32, pos }, kctx, self.scan_keys)
            }
        };
        c.nodes.push(Node { parent: node, seg });
        let member = (c.nodes.len() - 1) as u32;
        if scan {
            self.add_field(py, c, sc, &key, member, inherited, rec, true)?;
        }
        self.walk(py, c, sc, v, member, inherited | kctx, rec, depth + 1)
    }

    /// `walk` of a value given as a borrowed reference: exact strings (ASCII, without lone
    /// surrogates), ints of 64 bits, floats, bools and None without running Python code;
    /// anything else through `walk`, holding a strong reference.
    #[allow(clippy::too_many_arguments)]
    fn walk_value(&self, py: Python<'_>, c: &mut Collected, sc: &mut Scratch, vp: *mut pyo3::ffi::PyObject, node: u32, ctx: u32, rec: u32, depth: usize) -> PyResult<()> {
        use pyo3::ffi;
        // SAFETY: `vp` is a live object (a borrowed reference of the caller); the calls
        // below only read it, and none runs Python code.
        unsafe {
            let t = ffi::Py_TYPE(vp);
            if t == std::ptr::addr_of_mut!(ffi::PyUnicode_Type) {
                let mut n: ffi::Py_ssize_t = 0;
                let p = ffi::PyUnicode_AsUTF8AndSize(vp, &mut n);
                if p.is_null() {
                    // Lone surrogates: `walk` hands it to Python's `normalize`.
                    drop(PyErr::take(py));
                } else {
                    let text = std::slice::from_raw_parts(p.cast::<u8>(), n as usize);
                    if text.is_ascii() {
                        Self::add_ascii_field(c, text, node, ctx, rec, false);
                        return Ok(());
                    }
                }
            } else if t == std::ptr::addr_of_mut!(ffi::PyLong_Type) {
                let mut overflow: std::os::raw::c_int = 0;
                let n = ffi::PyLong_AsLongLongAndOverflow(vp, &mut overflow);
                if overflow == 0 && (n != -1 || ffi::PyErr_Occurred().is_null()) {
                    let mut buf = itoa_buf(n);
                    Self::add_ascii_field(c, buf.as_bytes_mut(), node, ctx, rec, false);
                    return Ok(());
                }
                drop(PyErr::take(py));
            } else if t == std::ptr::addr_of_mut!(ffi::PyFloat_Type) {
                if let Some(text) = float_repr(ffi::PyFloat_AsDouble(vp)) {
                    Self::add_ascii_field(c, text.as_bytes(), node, ctx, rec, false);
                    return Ok(());
                }
            } else if vp == ffi::Py_None() || t == std::ptr::addr_of_mut!(ffi::PyBool_Type) {
                return Ok(());
            }
        }
        // SAFETY: as above; the reference is made strong before any Python code runs.
        let obj = unsafe { Bound::from_borrowed_ptr(py, vp) };
        self.walk(py, c, sc, &obj, node, ctx, rec, depth)
    }

    fn python_context(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<u32> {
        let names = self.field_context.bind(py).call1((key,))?;
        self.ctx_from_names(&names)
    }

    fn walk(&self, py: Python<'_>, c: &mut Collected, sc: &mut Scratch, obj: &Bound<'_, PyAny>, node: u32, ctx: u32, rec: u32, depth: usize) -> PyResult<()> {
        if depth > MAX_DEPTH {
            return Err(PyRecursionError::new_err("record nested too deeply to scan"));
        }
        if let Ok(d) = obj.cast_exact::<PyDict>() {
            return self.walk_dict(py, c, sc, d, node, ctx, rec, depth);
        }
        if let Ok(s) = obj.cast_exact::<PyString>() {
            return self.add_field(py, c, sc, s, node, ctx, rec, false);
        }
        if let Ok(l) = obj.cast_exact::<PyList>() {
            for (i, v) in l.iter().enumerate() {
                c.nodes.push(Node { parent: node, seg: Seg::Index(i as u32) });
                let child = (c.nodes.len() - 1) as u32;
                self.walk(py, c, sc, &v, child, ctx, rec, depth + 1)?;
            }
            return Ok(());
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            for (i, v) in t.iter().enumerate() {
                c.nodes.push(Node { parent: node, seg: Seg::Index(i as u32) });
                let child = (c.nodes.len() - 1) as u32;
                self.walk(py, c, sc, &v, child, ctx, rec, depth + 1)?;
            }
            return Ok(());
        }
        if obj.is_exact_instance_of::<PyInt>() {
            if let Ok(n) = obj.extract::<i64>() {
                let mut buf = itoa_buf(n);
                Self::add_ascii_field(c, buf.as_bytes_mut(), node, ctx, rec, false);
                return Ok(());
            }
            let text = obj.str()?;
            return self.add_field(py, c, sc, &text, node, ctx, rec, false);
        }
        if obj.is_exact_instance_of::<PyFloat>() {
            let x = obj.cast::<PyFloat>()?.value();
            if let Some(text) = float_repr(x) {
                Self::add_ascii_field(c, text.as_bytes(), node, ctx, rec, false);
                return Ok(());
            }
            let text = obj.repr()?;
            return self.add_field(py, c, sc, &text, node, ctx, rec, false);
        }
        if obj.is_none() || obj.is_instance_of::<pyo3::types::PyBool>() {
            return Ok(());
        }
        // Subclasses of the JSON types: converted as the Python walk converts them.
        let convert = if obj.is_instance_of::<PyString>() {
            Some(0)
        } else if obj.is_instance_of::<PyInt>() {
            Some(1)
        } else if obj.is_instance_of::<PyFloat>() {
            Some(2)
        } else if obj.is_instance_of::<PyDict>() {
            Some(3)
        } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            Some(4)
        } else {
            None
        };
        if let Some(i) = convert {
            let converted = self.builtins[i].bind(py).call1((obj,))?;
            return self.walk(py, c, sc, &converted, node, ctx, rec, depth);
        }
        let path = self.render(py, c, &sc.key_text, node, &[])?;
        let where_ = if path.is_empty() { "the top level".to_owned() } else { path };
        let tname = obj.get_type().name()?;
        Err(PyTypeError::new_err(format!(
            "cannot scan a {tname} at {where_}: records must be decoded JSON (dict, list, str, int, float, bool, None)"
        )))
    }

    // -- paths --------------------------------------------------------------------------

    /// `_paths.render_path` of a node; `hidden[n]` marks key nodes that hold a finding.
    fn render(&self, py: Python<'_>, c: &Collected, key_text: &[Box<[u8]>], node: u32, hidden: &[bool]) -> PyResult<String> {
        // The nodes from the top down: on the stack for paths of up to 16 segments.
        let mut short = [0u32; 16];
        let mut long = Vec::new();
        let mut depth = 0;
        let mut n = node;
        while n != NONE {
            if depth < short.len() {
                short[depth] = n;
            } else {
                if long.is_empty() {
                    long.extend_from_slice(&short);
                }
                long.push(n);
            }
            depth += 1;
            n = c.nodes[n as usize].parent;
        }
        let chain = if long.is_empty() { &short[..depth] } else { &long[..] };
        let mut out = String::with_capacity(64);
        for &n in chain.iter().rev() {
            match c.nodes[n as usize].seg {
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(std::str::from_utf8(itoa_buf(i64::from(i)).as_bytes_mut()).unwrap_or_default());
                    out.push(']');
                }
                Seg::Key { pos, .. } | Seg::Known { pos, .. } | Seg::OddKey { pos, .. } if hidden.get(n as usize).copied().unwrap_or(false) => {
                    out.push_str("{#");
                    out.push_str(std::str::from_utf8(itoa_buf(i64::from(pos)).as_bytes_mut()).unwrap_or_default());
                    out.push('}');
                }
                Seg::Key { .. } | Seg::Known { .. } => {
                    let key = match c.nodes[n as usize].seg {
                        Seg::Known { info, .. } => &key_text[info as usize][..],
                        Seg::Key { start, len, .. } => &c.keys[start as usize..(start + len) as usize],
                        _ => &[],
                    };
                    if is_ident(key) {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.push_str(std::str::from_utf8(key).unwrap_or_default());
                    } else {
                        out.push('[');
                        json_quote(key, &mut out);
                        out.push(']');
                    }
                }
                Seg::OddKey { idx, .. } => {
                    // Lone surrogates: exactly what `orjson.dumps` does (it refuses them).
                    let dumped = self.dumps.bind(py).call1((c.odd_keys[idx as usize].bind(py),))?;
                    out.push('[');
                    out.push_str(&String::from_utf8_lossy(dumped.extract::<&[u8]>()?));
                    out.push(']');
                }
            }
        }
        Ok(out)
    }

    // -- detection ----------------------------------------------------------------------

    /// The patterns that fire in each field (bit `i`: pattern `i`): the overlapping search
    /// of `regex-automata` (`try_search_overlapping_fwd`) with the multi-pattern lazy DFA
    /// over `big`, written out. Every match state reached names the patterns whose match
    /// ends where it is entered; each goes to the field that holds the match's last byte.
    fn fire(&self, big: &[u8], fields: &[(usize, usize, u32)], cache: &mut Cache, fired: &mut Vec<Fired>) -> PyResult<()> {
        fired.clear();
        fired.resize(fields.len(), (0, 0));
        if big.is_empty() {
            return Ok(());
        }
        if self.lanes && fields.len() >= LANES {
            if self.fire_lanes(big, fields, cache, fired)? {
                return Ok(());
            }
            fired.fill((0, 0));
        }
        let mut sid = self.dfa.start_state_forward(cache, &Input::new(big)).map_err(|_| dfa_failed())?;
        let mut fi = 0;
        for (at, &byte) in big.iter().enumerate() {
            sid = self.dfa.next_state(cache, sid, byte).map_err(|_| dfa_failed())?;
            if sid.is_tagged() {
                if sid.is_match() {
                    self.mark(cache, sid, at, fields, &mut fi, fired);
                } else if sid.is_dead() {
                    return Ok(());
                } else if sid.is_quit() {
                    return Err(dfa_failed());
                }
            }
        }
        sid = self.dfa.next_eoi_state(cache, sid).map_err(|_| dfa_failed())?;
        if sid.is_match() {
            self.mark(cache, sid, big.len(), fields, &mut fi, fired);
        }
        Ok(())
    }

    /// `fire` as `LANES` searches run in step, each over a run of whole fields: a lazy DFA
    /// walk is bound by the latency of its table loads, and independent walks overlap.
    /// Only when no pattern consumes NUL (`Engine::lanes`): then every match lies within one
    /// field, and the state after a field's NUL behaves as the start state with a NUL
    /// before it, the start state each lane begins with. False (the caller then runs the
    /// one search) when the fields are not the NUL-separated runs of `scan_collected`, when
    /// a walk dies or stops, or when the cache was cleared (the other lanes' states would be
    /// stale).
    fn fire_lanes(&self, big: &[u8], fields: &[(usize, usize, u32)], cache: &mut Cache, fired: &mut [Fired]) -> PyResult<bool> {
        let dfa = &self.dfa;
        let clears = cache.clear_count();
        // Lane k starts at the field boundary nearest k/LANES of the text (fields are
        // whole, so the runs differ by up to a field's length).
        let mut first = [0usize; LANES + 1];
        first[LANES] = fields.len();
        for k in 1..LANES {
            let target = big.len() * k / LANES;
            let mut f = first[k - 1].max(1);
            while f < fields.len() && fields[f].0 < target {
                f += 1;
            }
            if f > first[k - 1].max(1) && f < fields.len() && target - fields[f - 1].0 < fields[f].0 - target {
                f -= 1;
            }
            first[k] = f;
        }
        let start = dfa.start_state_forward(cache, &Input::new(big)).map_err(|_| dfa_failed())?;
        let mut lanes = [Lane { at: 0, end: 0, sid: start, fi: 0, scanned: false }; LANES];
        for (k, lane) in lanes.iter_mut().enumerate() {
            // The first lane starts at the start of the text, as the one search does.
            lane.at = if k == 0 { 0 } else { fields.get(first[k]).map_or(big.len(), |f| f.0) };
            lane.end = fields.get(first[k + 1]).map_or(big.len(), |f| f.0);
            lane.fi = first[k];
            lane.scanned = lane.at < lane.end;
            if k > 0 && lane.at < big.len() {
                if lane.at == 0 || big[lane.at - 1] != 0 {
                    return Ok(false);
                }
                lane.sid = dfa.start_state_forward(cache, &Input::new(big).range(lane.at..)).map_err(|_| dfa_failed())?;
            }
        }
        if cache.clear_count() != clears {
            return Ok(false);
        }
        // The lanes that have bytes left advance in step, three, then two, then one (the
        // run that ends last goes on with the other that is left, not alone).
        loop {
            let mut live = lanes.each_mut().into_iter().filter(|lane| lane.at < lane.end);
            let ok = match (live.next(), live.next(), live.next()) {
                (Some(a), Some(b), Some(c)) => self.in_step(big, fields, cache, fired, clears, [a, b, c])?,
                (Some(a), Some(b), None) => self.in_step(big, fields, cache, fired, clears, [a, b])?,
                (Some(a), None, _) => self.in_step(big, fields, cache, fired, clears, [a])?,
                (None, ..) => break,
            };
            if !ok {
                return Ok(false);
            }
        }
        // The end of the text is the end of the last lane that has bytes.
        let Some(tail) = lanes.iter_mut().rev().find(|lane| lane.scanned) else { return Ok(true) };
        let last = dfa.next_eoi_state(cache, tail.sid).map_err(|_| dfa_failed())?;
        if cache.clear_count() != clears {
            return Ok(false);
        }
        if last.is_match() {
            self.mark(cache, last, big.len(), fields, &mut tail.fi, fired);
        }
        Ok(true)
    }

    /// `K` lanes of `fire_lanes`, each with bytes left, advanced together until the
    /// shortest reaches its end: byte `i` of each at its `at + i`. A byte whose transition
    /// is in the table and leads to a state that is not tagged is the whole of the loop (the
    /// states stay in registers); anything else (a state to compute, a match) goes to
    /// `slow_step`, lane by lane. False when the lanes must give up.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn in_step<const K: usize>(&self, big: &[u8], fields: &[(usize, usize, u32)], cache: &mut Cache, fired: &mut [Fired], clears: usize, mut lanes: [&mut Lane; K]) -> PyResult<bool> {
        let dfa = &self.dfa;
        let n = lanes.iter().map(|l| l.end - l.at).min().unwrap_or(0);
        let base: [usize; K] = std::array::from_fn(|k| lanes[k].at);
        let texts: [&[u8]; K] = std::array::from_fn(|k| &big[base[k]..base[k] + n]);
        let mut sids: [LazyStateID; K] = std::array::from_fn(|k| lanes[k].sid);
        let mut untagged = sids.iter().all(|s| !s.is_tagged());
        let mut i = 0;
        while i < n {
            if untagged {
                let next: [LazyStateID; K] = std::array::from_fn(|k| dfa.next_state_untagged(cache, sids[k], texts[k][i]));
                if next.iter().all(|s| !s.is_tagged()) {
                    sids = next;
                    i += 1;
                    continue;
                }
            }
            for (k, lane) in lanes.iter_mut().enumerate() {
                (lane.at, lane.sid) = (base[k] + i, sids[k]);
                if !self.slow_step(big, fields, cache, fired, clears, lane)? {
                    return Ok(false);
                }
                sids[k] = lane.sid;
            }
            untagged = sids.iter().all(|s| !s.is_tagged());
            i += 1;
        }
        for (k, lane) in lanes.iter_mut().enumerate() {
            (lane.at, lane.sid) = (base[k] + n, sids[k]);
        }
        Ok(true)
    }

    /// One byte of a lane of `fire_lanes`, which may compute a state and record a match;
    /// false when the lanes must give up.
    #[inline(never)]
    fn slow_step(&self, big: &[u8], fields: &[(usize, usize, u32)], cache: &mut Cache, fired: &mut [Fired], clears: usize, lane: &mut Lane) -> PyResult<bool> {
        let next = self.dfa.next_state(cache, lane.sid, big[lane.at]).map_err(|_| dfa_failed())?;
        if cache.clear_count() != clears {
            return Ok(false);
        }
        lane.sid = next;
        if next.is_tagged() {
            if !next.is_match() {
                return Ok(false);
            }
            self.mark(cache, next, lane.at, fields, &mut lane.fi, fired);
        }
        lane.at += 1;
        Ok(true)
    }

    /// Record the patterns of match state `sid`, entered at `end`, in the field holding
    /// the byte before `end`; `fi` is the field cursor (matches come in order of their end).
    fn mark(&self, cache: &Cache, sid: LazyStateID, end: usize, fields: &[(usize, usize, u32)], fi: &mut usize, fired: &mut [Fired]) {
        let last = end.saturating_sub(1);
        while *fi < fields.len() && fields[*fi].0 + fields[*fi].1 <= last {
            *fi += 1;
        }
        if *fi < fields.len() {
            let mut bits = 0u64;
            for k in 0..self.dfa.match_len(cache, sid) {
                bits |= 1 << self.dfa.match_pattern(cache, sid, k).as_usize();
            }
            let f = &mut fired[*fi];
            f.0 |= bits;
            if bits & self.rule_pats != 0 {
                // Matches come in order of their end within a field.
                f.1 = end;
            }
        }
    }

    /// The candidates kept per field (resolved, normalised offsets) into `det.found`, as
    /// (field, candidate) in field order.
    fn detect(&self, big: &[u8], fields: &[(usize, usize, u32)], det: &mut Det) -> PyResult<()> {
        det.found.clear();
        self.fire(big, fields, &mut det.dfa, &mut det.fired)?;
        for (fi, &(start, len, ctx)) in fields.iter().enumerate() {
            let (bits, last_end) = det.fired[fi];
            if bits == 0 && ctx == 0 {
                continue;
            }
            let text = &big[start..start + len];
            det.cands.clear();
            let mut keyword_types = 0u32;
            let mut b = bits;
            while b != 0 {
                let pid = b.trailing_zeros() as usize;
                b &= b - 1;
                match self.pats[pid] {
                    Pat::Keyword(bit) => keyword_types |= bit,
                    Pat::Rule(ri) => {
                        let rule = &self.rules[ri];
                        if rule.is_ip && ctx & NOT_IP != 0 {
                            continue;
                        }
                        // Every match of the rule holds a match of its pattern (the rule's
                        // expression or a prefilter that matches within it), which the
                        // search above saw: none starts at or after the last one's end.
                        let limit = last_end.saturating_sub(start);
                        self.run_rule(ri, text, ctx & rule.type_bit != 0, limit, &mut det.spans, &mut det.cands, &mut det.rx[ri]);
                    }
                }
            }
            if ctx != 0 || keyword_types != 0 {
                for &ri in &self.context_rules {
                    let rule = &self.rules[ri];
                    let by_name = ctx & rule.type_bit != 0;
                    let by_keyword = rule.keywords && keyword_types & rule.type_bit != 0;
                    if !(by_name || by_keyword) || (rule.is_ip && ctx & NOT_IP != 0) {
                        continue;
                    }
                    self.run_rule(ri, text, by_name, usize::MAX, &mut det.spans, &mut det.cands, &mut det.rx[ri]);
                }
            }
            resolve(&mut det.cands, fi as u32, &mut det.found);
        }
        Ok(())
    }

    /// The candidates of rule `ri` in `text`; no match starts at or after `limit`.
    #[allow(clippy::too_many_arguments)]
    fn run_rule(&self, ri: usize, text: &[u8], has_ctx: bool, limit: usize, spans: &mut Vec<Span>, cands: &mut Vec<Cand>, cache: &mut HybridCache) {
        let rule = &self.rules[ri];
        let mut input = Input::new(text);
        // `find_iter`, unrolled: after a non-empty match that reaches the end of the text
        // only an empty match at the end could follow, and `find_iter` skips an empty
        // match where the previous one ended; so that last search is not run.
        let mut pos = 0;
        let mut last_end = usize::MAX;
        while pos <= text.len() {
            input.set_start(pos);
            // The lazy DFA cannot fail here (no Unicode word boundary, no give-up
            // threshold); were it to, the `regex` crate answers instead.
            let found = match rule.fast.try_search(cache, &input) {
                Ok(m) => m.map(|m| (m.start(), m.end())),
                Err(_) => rule.regex.find_at(text, pos).map(|m| (m.start(), m.end())),
            };
            let Some((ms, me)) = found else { break };
            if ms == me && me == last_end {
                pos = me + 1;
                continue;
            }
            spans.clear();
            rule.validator.run(&self.kw, text, ms, me, has_ctx, spans);
            for &(s, e, conf) in spans.iter() {
                if conf >= self.min_confidence {
                    cands.push((conf, s, e, ri));
                }
            }
            last_end = me;
            if (me == text.len() || me >= limit) && ms != me {
                break;
            }
            pos = me;
        }
    }

    fn finding<'py>(&self, py: Python<'py>, ri: usize, path: &Bound<'py, PyString>, s: u32, e: u32, conf: f64, in_key: bool) -> PyResult<Bound<'py, PyAny>> {
        let items: [Bound<'py, PyAny>; 6] = [
            self.rules[ri].type_name.bind(py).clone().into_any(),
            path.clone().into_any(),
            s.into_pyobject(py)?.into_any(),
            e.into_pyobject(py)?.into_any(),
            PyFloat::new(py, conf).into_any(),
            pyo3::types::PyBool::new(py, in_key).to_owned().into_any(),
        ];
        if !self.direct {
            let t = PyTuple::new(py, items)?;
            return self.tuple_new.bind(py).call1((self.finding.bind(py), t));
        }
        // SAFETY: `finding` is a tuple subtype with tuple's layout (checked in `new`);
        // this is `tuple_subtype_new`: allocate with the type, then move the items in
        // (a fresh tuple's slots are NULL, so nothing is overwritten).
        unsafe {
            let obj = pyo3::ffi::PyType_GenericAlloc(self.finding.as_ptr().cast::<pyo3::ffi::PyTypeObject>(), 6);
            if obj.is_null() {
                return Err(PyErr::fetch(py));
            }
            let obj = Bound::from_owned_ptr(py, obj);
            for (i, item) in items.into_iter().enumerate() {
                if pyo3::ffi::PyTuple_SetItem(obj.as_ptr(), i as pyo3::ffi::Py_ssize_t, item.into_ptr()) != 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            // Only strings, numbers and a bool inside: no cycle can pass through it, so
            // the collector need not track it (CPython untracks such tuples itself at its
            // next collection).
            pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
            Ok(obj)
        }
    }

    fn scan_collected<'py>(&self, py: Python<'py>, c: &Collected, n_records: usize, sc: &mut Scratch) -> PyResult<Vec<Bound<'py, PyList>>> {
        self.detect(&c.big, &c.spans, &mut sc.det)?;
        let found = &sc.det.found;
        let has_findings = |field: u32| found.binary_search_by_key(&field, |&(f, _)| f).is_ok();
        for &(start, len, kctx, inherited, field) in &c.new_ctx {
            if field != NONE && has_findings(field) {
                continue;
            }
            let known = if len == KNOWN {
                Some(start)
            } else {
                sc.ctx.get(&c.keys[start as usize..(start + len) as usize]).copied()
            };
            if let Some(i) = known {
                let info = &mut sc.infos[i as usize];
                if field != NONE && !info.is_clean(inherited) && (info.n_clean as usize) < info.clean.len() {
                    info.clean[info.n_clean as usize] = inherited;
                    info.n_clean += 1;
                }
            } else if sc.ctx.len() < CTX_CACHE_LIMIT {
                let kb = &c.keys[start as usize..(start + len) as usize];
                let mut info = KeyInfo { ctx: kctx, clean: [0; 4], n_clean: 0 };
                if field != NONE {
                    info.clean[0] = inherited;
                    info.n_clean = 1;
                }
                sc.ctx.insert(kb.into(), sc.infos.len() as u32);
                sc.infos.push(info);
                sc.key_text.push(kb.into());
            }
        }
        let results: Vec<Bound<'py, PyList>> = (0..n_records).map(|_| PyList::empty(py)).collect();
        let mut hidden: Vec<bool> = Vec::new();
        let mut i = 0;
        while i < found.len() {
            let fi = found[i].0;
            let n = found[i..].iter().take_while(|&&(f, _)| f == fi).count();
            let f = &c.fields[fi as usize];
            if f.is_key {
                if hidden.len() < c.nodes.len() {
                    hidden.resize(c.nodes.len(), false);
                }
                hidden[f.node as usize] = true;
            }
            let path = if f.node == NONE { self.empty.bind(py).clone() } else { PyString::new(py, &self.render(py, c, &sc.key_text, f.node, &hidden)?) };
            let imap = (f.imap != NONE).then(|| &c.imaps[f.imap as usize]);
            for &(_, (conf, s, e, ri)) in &found[i..i + n] {
                let (s, e) = match imap {
                    Some(m) => (m[s], m[e - 1] + 1),
                    None => (s as u32, e as u32),
                };
                results[f.rec as usize].append(self.finding(py, ri, &path, s, e, conf, f.is_key)?)?;
            }
            i += n;
        }
        Ok(results)
    }
}

/// One search of `Engine::fire_lanes`: its next byte, its end, its state, its field cursor,
/// and whether it has any bytes.
#[derive(Clone, Copy)]
struct Lane {
    at: usize,
    end: usize,
    sid: LazyStateID,
    fi: usize,
    scanned: bool,
}

/// The error of a failed DFA search; the search's own error names a byte and an offset of
/// the text, so it is not passed on.
fn dfa_failed() -> PyErr {
    PyValueError::new_err("the native DFA search failed")
}

/// Whether some pattern of `nfa` can consume a NUL byte, over the states reachable from the
/// anchored start (every pattern, without the unanchored prefix, which consumes anything).
fn consumes_nul(nfa: &thompson::NFA) -> bool {
    use regex_automata::nfa::thompson::State;
    let mut seen = vec![false; nfa.states().len()];
    let mut stack = vec![nfa.start_anchored()];
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id.as_usize()], true) {
            continue;
        }
        match nfa.state(id) {
            State::ByteRange { trans } => {
                if trans.matches_byte(0) {
                    return true;
                }
                stack.push(trans.next);
            }
            State::Sparse(t) => {
                if t.matches_byte(0).is_some() {
                    return true;
                }
                stack.extend(t.transitions.iter().map(|t| t.next));
            }
            State::Dense(t) => {
                if t.matches_byte(0).is_some() {
                    return true;
                }
                stack.extend(t.transitions.iter().copied());
            }
            State::Look { next, .. } | State::Capture { next, .. } => stack.push(*next),
            State::Union { alternates } => stack.extend(alternates.iter().copied()),
            State::BinaryUnion { alt1, alt2 } => stack.extend([*alt1, *alt2]),
            State::Fail | State::Match { .. } => {}
        }
    }
    false
}

/// Keep the best of overlapping candidates: higher confidence, then longer, then
/// earlier, then the rule listed first; appended to `out` as (field, candidate) in text
/// order (`scanner._resolve`).
fn resolve(cands: &mut [Cand], field: u32, out: &mut Vec<(u32, Cand)>) {
    if cands.len() <= 1 {
        out.extend(cands.iter().map(|&c| (field, c)));
        return;
    }
    cands.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((b.2 - b.1).cmp(&(a.2 - a.1)))
            .then(a.1.cmp(&b.1))
            .then(a.3.cmp(&b.3))
    });
    let base = out.len();
    for &c in cands.iter() {
        if out[base..].iter().all(|(_, k)| c.2 <= k.1 || c.1 >= k.2) {
            out.push((field, c));
        }
    }
    out[base..].sort_by(|(_, a), (_, b)| (a.1, a.2).cmp(&(b.1, b.2)));
}

fn is_ident(key: &[u8]) -> bool {
    match key.split_first() {
        Some((&first, rest)) => (first.is_ascii_alphabetic() || first == b'_') && rest.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_'),
        None => false,
    }
}

/// `orjson.dumps(key).decode()` for a valid UTF-8 key.
fn json_quote(key: &[u8], out: &mut String) {
    out.push('"');
    let text = std::str::from_utf8(key).unwrap_or_default();
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(x)` for a finite float, as CPython writes it (`float_repr`: the shortest digits
/// that read back as `x`, in positional notation when the decimal point falls within
/// 16 digits of the first one and not 4 or more places before it, else exponential with
/// a signed, two-digit exponent); None for inf and nan. Rust's `{:e}` gives the same
/// shortest, nearest digits.
pub fn float_repr(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    if let Some(out) = decimal_repr(x) {
        return Some(out);
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let mut digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    even_tie(x.abs(), &mut digits, exp);
    let decpt = exp + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    out.push_str(sign);
    if -4 < decpt && decpt <= 16 {
        let n = digits.len() as i32;
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
    Some(out)
}

/// Where `x` lies exactly halfway between two shortest digit strings that both read back
/// as it, Python's `repr` takes the one whose last digit is even, `{:e}` may take the other:
/// `digits` (of `x > 0`, first digit at 10^`exp`) becomes the even one then.
fn even_tie(x: f64, digits: &mut String, exp: i32) {
    let Some(last) = digits.bytes().last().map(|b| b - b'0') else { return };
    if last % 2 == 0 {
        return;
    }
    let n = digits.len();
    let reads = |d: &str| format!("{}.{}e{exp}", &d[..1], &d[1..]).parse::<f64>().is_ok_and(|y| y == x);
    for other in [last - 1, last + 1] {
        if other > 9 {
            continue;
        }
        let mut candidate = digits.clone();
        candidate.replace_range(n - 1.., &other.to_string());
        if !reads(&candidate) {
            continue;
        }
        // A tie: the exact value of `x` (every double's decimal expansion ends within 767
        // significant digits) is the lower candidate followed by a 5.
        let lower = if other < last { &candidate } else { &*digits };
        let exact = format!("{x:.800e}");
        let Some((mantissa, e)) = exact.split_once('e') else { return };
        let exact_digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let midpoint = format!("{lower}5");
        if e.parse::<i32>() == Ok(exp) && exact_digits.starts_with(&midpoint) && exact_digits[midpoint.len()..].bytes().all(|b| b == b'0') {
            *digits = candidate;
        }
        return;
    }
}

/// `repr(x)` for the floats that records mostly hold, decimals of a few digits between
/// 1e-4 and 1e15 (amounts, coordinates, latencies), without the general shortest-digits
/// search; None for the others. The shortest digits that read back as `x` are those of the
/// integer `y` nearest `|x| 10^k` for the least `k` at which one reads back: with `y` and
/// `10^k` exact (below 2^53 and 10^22), `y / 10^k` is the correctly rounded quotient, the
/// float the decimal reads as. The integer nearest `|x| 10^k` is within one of the
/// rounded product, so the three around it are tried; two that read back (a tie Python
/// breaks by distance) leave it to the general path. In this range `repr` is positional.
fn decimal_repr(x: f64) -> Option<String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let a = x.abs();
    if !(1e-4..1e15).contains(&a) {
        return None;
    }
    let mut scale = 1.0f64;
    for k in 0..=17u32 {
        let y = (a * scale).round();
        if y + 1.0 >= EXACT {
            return None;
        }
        let back = |c: f64| c >= 0.0 && c / scale == a;
        let mut hit = None;
        for c in [y - 1.0, y, y + 1.0] {
            if back(c) {
                if hit.is_some() {
                    return None;
                }
                hit = Some(c as u64);
            }
        }
        if let Some(digits) = hit {
            let p = 10u64.pow(k);
            let (int, frac) = (digits / p, digits % p);
            if k > 0 && frac % 10 == 0 {
                return None; // fewer decimals would have read back: not expected here
            }
            let mut out = String::with_capacity(24);
            if x < 0.0 {
                out.push('-');
            }
            out.push_str(std::str::from_utf8(itoa_buf(int as i64).as_bytes_mut()).unwrap_or_default());
            out.push('.');
            if k == 0 {
                out.push('0');
            }
            for d in (0..k).rev() {
                out.push(char::from(b'0' + (frac / 10u64.pow(d) % 10) as u8));
            }
            return Some(out);
        }
        scale *= 10.0;
    }
    None
}

struct ItoaBuf {
    buf: [u8; 24],
    start: usize,
}

impl ItoaBuf {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(n: i64) -> ItoaBuf {
    let mut buf = [0u8; 24];
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    ItoaBuf { buf, start: i }
}

#[pymethods]
impl Engine {
    /// `rules`: (name, type, regex, prefilter or None, context_only, keywords) in the
    /// scanner's order; `keywords`: (type, regex) of the keyword patterns; `near`: the
    /// (type, regex) that `keyword_near` searches for; `types`: every
    /// entity type (bit order); `hooks`: the Python functions the engine defers to.
    #[new]
    #[pyo3(signature = (rules, keywords, near, types, *, min_confidence, scan_keys, finding, map_char, normalize, field_context, dumps))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        rules: Vec<(String, String, String, Option<String>, bool, bool)>,
        keywords: Vec<(String, String)>,
        near: Vec<(String, String)>,
        types: Vec<String>,
        min_confidence: f64,
        scan_keys: bool,
        finding: Py<PyAny>,
        map_char: Py<PyAny>,
        normalize: Py<PyAny>,
        field_context: Py<PyAny>,
        dumps: Py<PyAny>,
    ) -> PyResult<Self> {
        if types.len() > 31 {
            return Err(PyValueError::new_err("the native engine supports at most 31 entity types"));
        }
        let bit = |t: &str| -> PyResult<u32> {
            types
                .iter()
                .position(|x| x == t)
                .map(|i| 1u32 << i)
                .ok_or_else(|| PyValueError::new_err(format!("unknown entity type {t}")))
        };
        let mut compiled = Vec::new();
        let mut pats = Vec::new();
        let mut dfa_patterns: Vec<String> = Vec::new();
        let mut context_rules = Vec::new();
        for (ri, (name, type_, regex, prefilter, context_only, kw)) in rules.iter().enumerate() {
            let validator = Validator::for_rule(name).ok_or_else(|| PyValueError::new_err(format!("the native engine has no validator for rule {name:?}")))?;
            compiled.push(Rule {
                type_bit: bit(type_)?,
                type_name: PyString::intern(py, type_).unbind(),
                type_str: type_.clone(),
                regex: build(regex, false)?,
                fast: build_fast(regex)?,
                validator,
                keywords: *kw,
                is_ip: type_ == "IP_ADDRESS",
            });
            if *context_only {
                context_rules.push(ri);
            } else {
                pats.push(Pat::Rule(ri));
                dfa_patterns.push(prefilter.clone().unwrap_or_else(|| regex.clone()));
            }
        }
        let mut ssn = None;
        let mut phone = None;
        for (type_, rx) in &keywords {
            pats.push(Pat::Keyword(bit(type_)?));
            dfa_patterns.push(format!("(?i:{rx})"));
        }
        // `keyword_near` looks for the words of `near` in lower-cased text.
        for (type_, rx) in &near {
            match type_.as_str() {
                "US_SSN" => ssn = Some(build(rx, false)?),
                "PHONE_NUMBER" => phone = Some(build(rx, false)?),
                _ => {}
            }
        }
        if pats.len() > 64 {
            return Err(PyValueError::new_err("the native engine supports at most 64 patterns"));
        }
        let dfa = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::All).cache_capacity(16 << 20).minimum_cache_clear_count(None))
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .thompson(thompson::Config::new().utf8(false).which_captures(thompson::WhichCaptures::None))
            .build_many(&dfa_patterns)
            .map_err(|e| PyValueError::new_err(format!("native engine cannot compile its patterns: {e}")))?;
        let lanes = !consumes_nul(dfa.get_nfa());
        let builtins_mod = py.import("builtins")?;
        let get = |n: &str| -> PyResult<Py<PyAny>> { Ok(builtins_mod.getattr(n)?.unbind()) };
        let tuple_type = builtins_mod.getattr("tuple")?;
        let tuple_new = tuple_type.getattr("__new__")?.unbind();
        let fb = finding.bind(py);
        let direct = fb.is_instance_of::<pyo3::types::PyType>()
            && fb.cast::<pyo3::types::PyType>()?.is_subclass(&tuple_type)?
            && fb.getattr("__basicsize__")?.eq(tuple_type.getattr("__basicsize__")?)?
            && fb.getattr("__itemsize__")?.eq(tuple_type.getattr("__itemsize__")?)?
            && fb.getattr("_fields")?.len()? == 6;
        let rule_pats = pats.iter().enumerate().filter(|(_, p)| matches!(p, Pat::Rule(_))).fold(0u64, |acc, (i, _)| acc | 1 << i);
        Ok(Engine {
            rules: compiled,
            pats,
            rule_pats,
            dfa,
            context_rules,
            lanes,
            kw: Keywords { ssn, phone },
            type_names: types,
            min_confidence,
            scan_keys,
            scratch: Mutex::new(Vec::new()),
            finding,
            tuple_new,
            direct,
            map_char,
            normalize,
            field_context,
            dumps,
            builtins: [get("str")?, get("int")?, get("float")?, get("dict")?, get("list")?],
            empty: PyString::intern(py, "").unbind(),
        })
    }

    /// Scan decoded records; returns the findings of each, in order.
    fn scan_records<'py>(&self, py: Python<'py>, objs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let mut sc = self.take_scratch();
        let mut c = std::mem::take(&mut sc.col);
        let result = (|| {
            let mut n = 0usize;
            for (rec, obj) in objs.try_iter()?.enumerate() {
                let obj = obj?;
                self.walk(py, &mut c, &mut sc, &obj, NONE, 0, rec as u32, 0)?;
                n += 1;
            }
            PyList::new(py, self.scan_collected(py, &c, n, &mut sc)?)
        })();
        sc.col = c;
        self.give_scratch(sc);
        result
    }

    /// `scan_records([obj])[0]`, without the lists around it.
    fn scan_record<'py>(&self, py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let mut sc = self.take_scratch();
        let mut c = std::mem::take(&mut sc.col);
        let result = (|| {
            self.walk(py, &mut c, &mut sc, obj, NONE, 0, 0, 0)?;
            Ok(self.scan_collected(py, &c, 1, &mut sc)?.swap_remove(0))
        })();
        sc.col = c;
        self.give_scratch(sc);
        result
    }

    /// Scan one string whose field context is `ctx` (type names); findings have path "".
    fn scan_text<'py>(&self, py: Python<'py>, text: &Bound<'py, PyString>, ctx: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let ctx = self.ctx_from_names(ctx)?;
        self.scan_one(py, text, ctx)
    }

    /// Whether `scan_text(text)` without context finds anything.
    fn detects(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<bool> {
        let mut sc = self.take_scratch();
        let result = (|| {
            let mut c = Collected::default();
            self.add_field(py, &mut c, &mut sc, text, NONE, 0, 0, false)?;
            self.detect(&c.big, &c.spans, &mut sc.det)?;
            Ok(!sc.det.found.is_empty())
        })();
        self.give_scratch(sc);
        result
    }
}

impl Engine {
    /// The findings of one ASCII string without field context, as (start, end, type):
    /// what `redact_text` needs, without building Python findings.
    pub(crate) fn scan_ascii_spans(&self, text: &str) -> PyResult<Vec<(usize, usize, &str)>> {
        let mut sc = self.take_scratch();
        let mut c = std::mem::take(&mut sc.col);
        c.big.extend_from_slice(text.as_bytes());
        let result = self
            .detect(&c.big, &[(0, text.len(), 0)], &mut sc.det)
            .map(|()| sc.det.found.iter().map(|&(_, (_, s, e, ri))| (s, e, self.rules[ri].type_str.as_str())).collect());
        sc.col = c;
        self.give_scratch(sc);
        result
    }

    /// The findings of any string without field context, as (start, end, type) in code
    /// points of `text`: `scan_text(text)` without building Python findings. The text is
    /// normalised as `scan_text` does it, and offsets go back through the same map.
    pub(crate) fn scan_spans(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<Vec<(usize, usize, &str)>> {
        let mut sc = self.take_scratch();
        let mut c = std::mem::take(&mut sc.col);
        let result = (|| {
            self.add_field(py, &mut c, &mut sc, text, NONE, 0, 0, false)?;
            self.detect(&c.big, &c.spans, &mut sc.det)?;
            let imap = c.imaps.first();
            Ok(sc
                .det
                .found
                .iter()
                .map(|&(_, (_, s, e, ri))| {
                    let (s, e) = match imap {
                        Some(m) => (m[s] as usize, m[e - 1] as usize + 1),
                        None => (s, e),
                    };
                    (s, e, self.rules[ri].type_str.as_str())
                })
                .collect())
        })();
        sc.col = c;
        self.give_scratch(sc);
        result
    }

    fn scan_one<'py>(&self, py: Python<'py>, text: &Bound<'py, PyString>, ctx: u32) -> PyResult<Bound<'py, PyList>> {
        let mut sc = self.take_scratch();
        let mut c = std::mem::take(&mut sc.col);
        let result = (|| {
            self.add_field(py, &mut c, &mut sc, text, NONE, ctx, 0, false)?;
            Ok(self.scan_collected(py, &c, 1, &mut sc)?.swap_remove(0))
        })();
        sc.col = c;
        self.give_scratch(sc);
        result
    }
}
