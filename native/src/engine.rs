//! The native scanning engine: `trustzones.dlp.scanner` in Rust, from the walk of the
//! decoded record to the findings.
//!
//! 1. Walk the Python objects (dicts, lists, strings, numbers) and copy every scannable
//!    text (values, and keys when keys are scanned), normalised to ASCII, into one buffer,
//!    fields separated by NUL (no rule matches NUL), with each field's path node and
//!    field-name context. Numbers are written as Python writes them (`str(int)`,
//!    `repr(float)`) without calling Python.
//! 2. One lazy-DFA pass (`regex-automata`, all rules' prefilters and the keyword patterns
//!    as one multi-pattern automaton, overlapping matches) over the buffer says which
//!    pattern fired in which field: the role Hyperscan plays in the Hyperscan engine.
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
use regex_automata::hybrid::dfa::{Cache, OverlappingState, DFA};
use regex_automata::hybrid::regex::{Cache as HybridCache, Regex as HybridRegex};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use rustc_hash::FxHashMap;

use crate::context::{key_context, NOT_IP};
use crate::validators::{Keywords, Span, Validator};

const NONE: u32 = u32::MAX;
/// Python recurses twice per level of nesting and stops near 1000 frames; a record this
/// deep is refused rather than risking the native stack.
const MAX_DEPTH: usize = 2000;
const NORM_CACHE_LIMIT: usize = 65_536;
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

/// A candidate: confidence, start, end (normalised offsets), rule index.
type Cand = (f64, usize, usize, usize);

/// Per-thread working memory, pooled: no lock is held while Python code runs.
struct Scratch {
    dfa: Cache,
    /// One cache per rule for `Rule::fast`.
    rx: Vec<HybridCache>,
    norm: FxHashMap<u32, u8>,
    /// ASCII keys seen before: their context, and the inherited contexts under which the
    /// key itself was scanned and held nothing (it need not be scanned again there). A key
    /// is only added once it is known to hold no finding (or keys are not scanned), so a
    /// sensitive key is never kept here.
    ctx: FxHashMap<Box<[u8]>, KeyInfo>,
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
    /// A key that is not valid UTF-8 (lone surrogates): rendered by Python.
    OddKey { idx: u32, pos: u32 },
    Index(u32),
}

struct Node {
    parent: u32,
    seg: Seg,
}

struct Field {
    start: u32,
    len: u32,
    ctx: u32,
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
    nodes: Vec<Node>,
    keys: Vec<u8>,
    odd_keys: Vec<Py<PyAny>>,
    imaps: Vec<Vec<u32>>,
    /// Keys learnt in this batch: (start, len in `keys`, context, inherited context,
    /// index of the key's own field or NONE).
    new_ctx: Vec<(u32, u32, u32, u32, u32)>,
}

impl Collected {
    fn clear(&mut self) {
        // The buffers are kept for their capacity: wipe the texts they held first.
        self.big.fill(0);
        self.keys.fill(0);
        self.big.clear();
        self.fields.clear();
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
    dfa: DFA,
    context_rules: Vec<usize>,
    kw: Keywords,
    type_names: Vec<String>,
    min_confidence: f64,
    scan_keys: bool,
    scratch: Mutex<Vec<Scratch>>,
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

    fn take_scratch(&self) -> Scratch {
        let got = self.scratch.lock().ok().and_then(|mut v| v.pop());
        got.unwrap_or_else(|| Scratch {
            dfa: self.dfa.create_cache(),
            rx: self.rules.iter().map(|r| r.fast.create_cache()).collect(),
            norm: FxHashMap::default(),
            ctx: FxHashMap::default(),
            col: Collected::default(),
        })
    }

    fn give_scratch(&self, mut s: Scratch) {
        s.col.clear();
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
        c.fields.push(Field { start: start as u32, len: (c.big.len() - start) as u32, ctx, node, rec, is_key, imap });
        c.big.push(0);
        Ok(())
    }

    fn add_ascii_field(c: &mut Collected, text: &[u8], node: u32, ctx: u32, rec: u32) {
        let start = c.big.len();
        c.big.extend_from_slice(text);
        c.fields.push(Field { start: start as u32, len: text.len() as u32, ctx, node, rec, is_key: false, imap: NONE });
        c.big.push(0);
    }

    fn walk_dict(&self, py: Python<'_>, c: &mut Collected, sc: &mut Scratch, d: &Bound<'_, PyDict>, node: u32, ctx: u32, rec: u32, depth: usize) -> PyResult<()> {
        let inherited = ctx & !NOT_IP;
        for (pos, (k, v)) in d.iter().enumerate() {
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
                    let (kctx, scan) = if !kb.is_ascii() {
                        (self.python_context(py, key.as_any())?, self.scan_keys)
                    } else if let Some(info) = sc.ctx.get(kb) {
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
                    (Seg::Key { start, len: kb.len() as u32, pos: pos as u32 }, kctx, scan)
                }
                Err(_) => {
                    c.odd_keys.push(key.clone().into_any().unbind());
                    let kctx = self.python_context(py, key.as_any())?;
                    (Seg::OddKey { idx: (c.odd_keys.len() - 1) as u32, pos: pos as u32 }, kctx, self.scan_keys)
                }
            };
            c.nodes.push(Node { parent: node, seg });
            let member = (c.nodes.len() - 1) as u32;
            if scan {
                self.add_field(py, c, sc, &key, member, inherited, rec, true)?;
            }
            self.walk(py, c, sc, &v, member, inherited | kctx, rec, depth + 1)?;
        }
        Ok(())
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
                Self::add_ascii_field(c, buf.as_bytes_mut(), node, ctx, rec);
                return Ok(());
            }
            let text = obj.str()?;
            return self.add_field(py, c, sc, &text, node, ctx, rec, false);
        }
        if obj.is_exact_instance_of::<PyFloat>() {
            let x = obj.cast::<PyFloat>()?.value();
            if let Some(text) = float_repr(x) {
                Self::add_ascii_field(c, text.as_bytes(), node, ctx, rec);
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
        let path = self.render(py, c, node, &[])?;
        let where_ = if path.is_empty() { "the top level".to_owned() } else { path };
        let tname = obj.get_type().name()?;
        Err(PyTypeError::new_err(format!(
            "cannot scan a {tname} at {where_}: records must be decoded JSON (dict, list, str, int, float, bool, None)"
        )))
    }

    // -- paths --------------------------------------------------------------------------

    /// `_paths.render_path` of a node; `hidden[n]` marks key nodes that hold a finding.
    fn render(&self, py: Python<'_>, c: &Collected, node: u32, hidden: &[bool]) -> PyResult<String> {
        let mut chain = Vec::new();
        let mut n = node;
        while n != NONE {
            chain.push(n);
            n = c.nodes[n as usize].parent;
        }
        let mut out = String::new();
        for &n in chain.iter().rev() {
            match c.nodes[n as usize].seg {
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
                Seg::Key { pos, .. } | Seg::OddKey { pos, .. } if hidden.get(n as usize).copied().unwrap_or(false) => {
                    let _ = write!(out, "{{#{pos}}}");
                }
                Seg::Key { start, len, .. } => {
                    let key = &c.keys[start as usize..(start + len) as usize];
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

    /// Candidates kept per field (resolved, normalised offsets), for fields `0..n`.
    fn detect(&self, big: &[u8], fields: &[(usize, usize, u32)], dfa_cache: &mut Cache, rx: &mut [HybridCache]) -> PyResult<Vec<Vec<Cand>>> {
        let n = fields.len();
        let mut fired = vec![0u64; n];
        if !big.is_empty() {
            let input = Input::new(big);
            let mut state = OverlappingState::start();
            let mut fi = 0usize;
            loop {
                self.dfa
                    .try_search_overlapping_fwd(dfa_cache, &input, &mut state)
                    // The error names a byte and an offset of the text: not passed on.
                    .map_err(|_| PyValueError::new_err("the native DFA search failed"))?;
                let Some(hm) = state.get_match() else { break };
                // Matches come in order of their end: the field cursor only moves forward.
                let at = hm.offset() - 1;
                while fi < n && fields[fi].0 + fields[fi].1 <= at {
                    fi += 1;
                }
                if fi < n {
                    fired[fi] |= 1 << hm.pattern().as_usize();
                }
            }
        }
        let mut out: Vec<Vec<Cand>> = Vec::with_capacity(n);
        let mut spans: Vec<Span> = Vec::new();
        for (fi, &(start, len, ctx)) in fields.iter().enumerate() {
            let bits = fired[fi];
            if bits == 0 && ctx == 0 {
                out.push(Vec::new());
                continue;
            }
            let text = &big[start..start + len];
            let mut cands: Vec<Cand> = Vec::new();
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
                        self.run_rule(ri, text, ctx & rule.type_bit != 0, &mut spans, &mut cands, &mut rx[ri]);
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
                    self.run_rule(ri, text, by_name, &mut spans, &mut cands, &mut rx[ri]);
                }
            }
            out.push(resolve(cands));
        }
        Ok(out)
    }

    fn run_rule(&self, ri: usize, text: &[u8], has_ctx: bool, spans: &mut Vec<Span>, cands: &mut Vec<Cand>, cache: &mut HybridCache) {
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
            if me == text.len() && ms != me {
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
        let spans: Vec<(usize, usize, u32)> = c.fields.iter().map(|f| (f.start as usize, f.len as usize, f.ctx)).collect();
        let found = self.detect(&c.big, &spans, &mut sc.dfa, &mut sc.rx)?;
        for &(start, len, kctx, inherited, field) in &c.new_ctx {
            if field != NONE && !found[field as usize].is_empty() {
                continue;
            }
            let kb = &c.keys[start as usize..(start + len) as usize];
            if let Some(info) = sc.ctx.get_mut(kb) {
                if field != NONE && !info.is_clean(inherited) && (info.n_clean as usize) < info.clean.len() {
                    info.clean[info.n_clean as usize] = inherited;
                    info.n_clean += 1;
                }
            } else if sc.ctx.len() < CTX_CACHE_LIMIT {
                let mut info = KeyInfo { ctx: kctx, clean: [0; 4], n_clean: 0 };
                if field != NONE {
                    info.clean[0] = inherited;
                    info.n_clean = 1;
                }
                sc.ctx.insert(kb.into(), info);
            }
        }
        let results: Vec<Bound<'py, PyList>> = (0..n_records).map(|_| PyList::empty(py)).collect();
        let mut hidden: Vec<bool> = Vec::new();
        for (f, cands) in c.fields.iter().zip(&found) {
            if cands.is_empty() {
                continue;
            }
            if f.is_key {
                if hidden.len() < c.nodes.len() {
                    hidden.resize(c.nodes.len(), false);
                }
                hidden[f.node as usize] = true;
            }
            let path = if f.node == NONE { self.empty.bind(py).clone() } else { PyString::new(py, &self.render(py, c, f.node, &hidden)?) };
            let imap = (f.imap != NONE).then(|| &c.imaps[f.imap as usize]);
            for &(conf, s, e, ri) in cands {
                let (s, e) = match imap {
                    Some(m) => (m[s], m[e - 1] + 1),
                    None => (s as u32, e as u32),
                };
                results[f.rec as usize].append(self.finding(py, ri, &path, s, e, conf, f.is_key)?)?;
            }
        }
        Ok(results)
    }
}

/// Keep the best of overlapping candidates: higher confidence, then longer, then
/// earlier, then the rule listed first; in text order (`scanner._resolve`).
fn resolve(mut cands: Vec<Cand>) -> Vec<Cand> {
    if cands.len() <= 1 {
        return cands;
    }
    cands.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((b.2 - b.1).cmp(&(a.2 - a.1)))
            .then(a.1.cmp(&b.1))
            .then(a.3.cmp(&b.3))
    });
    let mut kept: Vec<Cand> = Vec::with_capacity(cands.len());
    for c in cands {
        if kept.iter().all(|k| c.2 <= k.1 || c.1 >= k.2) {
            kept.push(c);
        }
    }
    kept.sort_by(|a, b| (a.1, a.2).cmp(&(b.1, b.2)));
    kept
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
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
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
        Ok(Engine {
            rules: compiled,
            pats,
            dfa,
            context_rules,
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
            let f = &c.fields[0];
            let found = self.detect(&c.big, &[(f.start as usize, f.len as usize, 0)], &mut sc.dfa, &mut sc.rx)?;
            Ok(!found[0].is_empty())
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
        let result = self.detect(&c.big, &[(0, text.len(), 0)], &mut sc.dfa, &mut sc.rx).map(|mut found| {
            found
                .swap_remove(0)
                .into_iter()
                .map(|(_, s, e, ri)| (s, e, self.rules[ri].type_str.as_str()))
                .collect()
        });
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
