//! The audit log's per-event hot paths (`trustzones.audit`): the rows `AuditLog.append_many`
//! inserts (RFC 8785 canonical JSON of each event and its RFC 9162 leaf hash), the compact
//! range's extension by a batch of leaves, and the canonical flow-transfer events of a batch.
//!
//! The Python code is the reference and these give identical bytes (tests/audit/ hold them
//! to it with hypothesis). Each function returns None (for the whole batch, or for one item)
//! wherever it meets a value or shape it does not handle, and Python then takes its own path,
//! which also raises the reference errors.

use std::io::Write;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};
use sha2::{Digest, Sha256};

/// Nested lists deeper than this go to Python (events hold flat lists of references).
const MAX_DEPTH: usize = 8;
/// The largest integer an event may hold (2**53 - 1), and the ranges flow records must keep.
const MAX_INT: i64 = (1 << 53) - 1;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// True when one of the 8 bytes of `w` must be escaped in a JSON string (a control character,
/// `"` or `\`): the usual test for a zero byte, applied to `w` below 0x20 and to `w` XOR
/// each of the two characters (exact for the chunk as a whole). A flagged chunk is then
/// copied byte by byte.
#[inline]
fn chunk_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// Appends byte `c` of a string, escaped as orjson and RFC 8785 escape it.
#[inline]
fn push_escaped(out: &mut Vec<u8>, c: u8) {
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0a => out.extend_from_slice(b"\\n"),
        0x0c => out.extend_from_slice(b"\\f"),
        0x0d => out.extend_from_slice(b"\\r"),
        0x00..=0x1f => {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        }
        _ => out.push(c),
    }
}

/// `s` as a JSON string the way orjson (and RFC 8785) writes it: `"` and `\` escaped, the
/// control characters below U+0020 as `\b \t \n \f \r` or `\u00xx`, everything else as is.
/// Eight bytes at a time (the last ones padded with spaces) while none needs escaping.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if chunk_needs_escape(u64::from_le_bytes(word)) {
            for &c in chunk {
                push_escaped(out, c);
            }
        } else {
            out.extend_from_slice(chunk);
        }
    }
    let rest = chunks.remainder();
    let mut word = [b' '; 8];
    word[..rest.len()].copy_from_slice(rest);
    if chunk_needs_escape(u64::from_le_bytes(word)) {
        for &c in rest {
            push_escaped(out, c);
        }
    } else {
        out.extend_from_slice(rest);
    }
    out.push(b'"');
}

/// Appends the decimal digits of `n` (what `write!` gives, without the formatter).
fn write_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut m = n.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends the JSON of a plain value (exact str, int within 64 bits, bool, None, or a list
/// or tuple of those); false, with `out` to be discarded, for anything else.
fn write_value(out: &mut Vec<u8>, v: &Bound<'_, PyAny>, depth: usize) -> bool {
    if let Ok(s) = v.cast_exact::<PyString>() {
        let Ok(text) = s.to_str() else { return false };
        write_str(out, text);
        return true;
    }
    if v.is_exact_instance_of::<PyBool>() {
        out.extend_from_slice(if v.is_truthy().unwrap_or(false) {
            b"true"
        } else {
            b"false"
        });
        return true;
    }
    if v.is_exact_instance_of::<PyInt>() {
        let Ok(n) = v.extract::<i64>() else {
            return false;
        };
        write_int(out, n);
        return true;
    }
    if v.is_none() {
        out.extend_from_slice(b"null");
        return true;
    }
    if depth >= MAX_DEPTH {
        return false;
    }
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = v.cast_exact::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = v.cast_exact::<PyTuple>() {
        t.iter().collect()
    } else {
        return false;
    };
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_value(out, item, depth + 1) {
            return false;
        }
    }
    out.push(b']');
    true
}

/// The fields `_canonical_row` reads from an event's dict and from its data's dict.
const TOP_NAMES: [&str; 4] = ["subject", "id", "time", "data"];
const DATA_NAMES: [&str; 7] = [
    "reason",
    "policy_version",
    "grant_id",
    "principal",
    "zone",
    "action",
    "decision",
];

/// An object's members as they come from its dict(s), keys known by their addresses (the
/// key objects, alive as long as the events): the order to write them in, sorted by key as
/// orjson's `OPT_SORT_KEYS` sorts (by the keys' UTF-8 bytes), each with its `"key":` text,
/// and where the fields `_canonical_row` reads are. Made once per shape and call: the events
/// of a batch mostly share one or two.
struct Shape {
    keys: Vec<usize>,
    /// Members before this index come from the model's dict, the others from its extra fields.
    split: usize,
    order: Vec<(usize, Vec<u8>)>,
    /// The index of each of `TOP_NAMES` or `DATA_NAMES` among the dict's own members.
    named: Vec<usize>,
}

/// The shapes met in one call.
#[derive(Default)]
struct Shapes(Vec<Shape>);

impl Shapes {
    /// The shape of members with the keys `keys` (at addresses `addrs`), the first `split`
    /// from the dict itself, made when new; None when a key is not an exact str, needs escaping
    /// or repeats (an extra field replacing a field), or one of `names` is not in the dict.
    fn get(
        &mut self,
        keys: &[Bound<'_, PyAny>],
        addrs: &[usize],
        split: usize,
        names: &[&str],
    ) -> Option<&Shape> {
        if let Some(at) = self
            .0
            .iter()
            .position(|s| s.split == split && s.keys == addrs)
        {
            return self.0.get(at);
        }
        let mut texts = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let text = k.cast_exact::<PyString>().ok()?.to_str().ok()?;
            if text.bytes().any(|c| c < 0x20 || c == b'"' || c == b'\\') {
                return None;
            }
            texts.push((text, i));
        }
        let named = names
            .iter()
            .map(|name| texts[..split].iter().position(|(t, _)| t == name))
            .collect::<Option<Vec<usize>>>()?;
        texts.sort_unstable();
        if texts.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        let order = texts
            .into_iter()
            .map(|(text, i)| {
                let mut member = Vec::with_capacity(text.len() + 3);
                member.push(b'"');
                member.extend_from_slice(text.as_bytes());
                member.extend_from_slice(b"\":");
                (i, member)
            })
            .collect();
        self.0.push(Shape {
            keys: addrs.to_vec(),
            split,
            order,
            named,
        });
        self.0.last()
    }
}

/// Reused from event to event: the members of the event's dict and of its data.
#[derive(Default)]
struct Members<'py> {
    keys: Vec<Bound<'py, PyAny>>,
    addrs: Vec<usize>,
    values: Vec<Bound<'py, PyAny>>,
}

impl<'py> Members<'py> {
    fn clear(&mut self) {
        self.keys.clear();
        self.addrs.clear();
        self.values.clear();
    }

    fn add(&mut self, d: &Bound<'py, PyDict>) {
        for (k, v) in d.iter() {
            self.addrs.push(k.as_ptr() as usize);
            self.keys.push(k);
            self.values.push(v);
        }
    }
}

/// The `__dict__` of `obj` when `obj` is exactly of type `model` and its `__dict__` a plain
/// dict; None otherwise (the caller then leaves the event to Python).
fn model_dict<'py>(
    obj: &Bound<'py, PyAny>,
    model: &Bound<'py, PyType>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    if !obj.get_type().is(model) {
        return Ok(None);
    }
    Ok(obj
        .getattr(intern!(obj.py(), "__dict__"))?
        .cast_into_exact::<PyDict>()
        .ok())
}

/// What `events._canonical_row` gives for an event model: (id, time, principal, zone,
/// action, decision), and its canonical JSON appended to `body`; None when the event is not
/// plainly an `event_type` holding a `data_type` of handled values.
#[allow(clippy::too_many_arguments)]
fn event_row<'py>(
    event: &Bound<'py, PyAny>,
    event_type: &Bound<'py, PyType>,
    data_type: &Bound<'py, PyType>,
    shapes: &mut (Shapes, Shapes),
    top: &mut Members<'py>,
    data: &mut Members<'py>,
    body: &mut Vec<u8>,
) -> PyResult<Option<[Bound<'py, PyAny>; 6]>> {
    let py = event.py();
    let Some(top_dict) = model_dict(event, event_type)? else {
        return Ok(None);
    };
    top.clear();
    top.add(&top_dict);
    let Some(top_shape) = shapes
        .0
        .get(&top.keys, &top.addrs, top.keys.len(), &TOP_NAMES)
    else {
        return Ok(None);
    };
    let [subject, id, time, data_at] = top_shape.named[..] else {
        return Ok(None);
    };
    let model = &top.values[data_at];
    let Some(d) = model_dict(model, data_type)? else {
        return Ok(None);
    };
    let extra = model.getattr(intern!(py, "__pydantic_extra__"))?;
    data.clear();
    data.add(&d);
    let split = data.keys.len();
    if !extra.is_none() {
        let Ok(extra) = extra.cast_exact::<PyDict>() else {
            return Ok(None);
        };
        data.add(extra);
    }
    if data.keys.len() > 64 {
        return Ok(None);
    }
    let Some(data_shape) = shapes.1.get(&data.keys, &data.addrs, split, &DATA_NAMES) else {
        return Ok(None);
    };
    let [reason, policy_version, grant_id, principal, zone, action, decision] =
        data_shape.named[..]
    else {
        return Ok(None);
    };
    // data: its fields but the optional ones that are None, then the extra fields.
    let mut left_out = 0u64;
    for i in [reason, policy_version, grant_id] {
        if data.values[i].is_none() {
            left_out |= 1 << i;
        }
    }
    // The event: its fields but a subject that is None, with data as above.
    body.push(b'{');
    let mut first = true;
    for (i, key) in &top_shape.order {
        if *i == subject && top.values[*i].is_none() {
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(key);
        if *i == data_at {
            body.push(b'{');
            let mut first_field = true;
            for (j, field) in &data_shape.order {
                if left_out >> j & 1 == 1 {
                    continue;
                }
                if !first_field {
                    body.push(b',');
                }
                first_field = false;
                body.extend_from_slice(field);
                if !write_value(body, &data.values[*j], 1) {
                    return Ok(None);
                }
            }
            body.push(b'}');
        } else if !write_value(body, &top.values[*i], 1) {
            return Ok(None);
        }
    }
    body.push(b'}');
    let row = [id, time].map(|i| top.values[i].clone());
    let facet = [principal, zone, action, decision].map(|i| data.values[i].clone());
    let [event_id, stamp] = row;
    let [principal, zone, action, decision] = facet;
    Ok(Some([event_id, stamp, principal, zone, action, decision]))
}

fn leaf_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// The values `AuditLog.append_many` inserts for `events`, one row after another in the
/// order of the file's `events` columns (after the leaf index): `(id, time, facet, leaf
/// hash, body)` with `with_facets`, else `(id, time, principal, zone, action, decision,
/// leaf hash, body)`; hashes and bodies as bytearrays. A facet is its id from `facet_ids`,
/// or its `(principal, zone, action, decision)` tuple when it has none yet. Returns the
/// values and whether a facet stands in for its id; None when an event is neither a
/// `canonical_type` (stored as it is) nor plainly an `event_type`.
#[pyfunction]
pub fn audit_rows<'py>(
    py: Python<'py>,
    events: &Bound<'py, PyList>,
    canonical_type: &Bound<'py, PyType>,
    event_type: &Bound<'py, PyType>,
    data_type: &Bound<'py, PyType>,
    facet_ids: &Bound<'py, PyDict>,
    with_facets: bool,
) -> PyResult<Option<(Bound<'py, PyList>, bool)>> {
    let width = if with_facets { 5 } else { 8 };
    let mut params: Vec<Bound<'py, PyAny>> = Vec::with_capacity(events.len() * width);
    let mut unresolved = false;
    // The facet of the previous event, by identity: a batch's events mostly share one.
    let mut last: Option<([Bound<'py, PyAny>; 4], Bound<'py, PyAny>)> = None;
    let mut shapes = (Shapes::default(), Shapes::default());
    let (mut top, mut data) = (Members::default(), Members::default());
    let mut made = Vec::with_capacity(1024);
    for event in events.iter() {
        let (row, body): ([Bound<'py, PyAny>; 6], &[u8]);
        let canonical;
        if event.get_type().is(canonical_type) {
            let Ok(t) = event.cast::<PyTuple>() else {
                return Ok(None);
            };
            if t.len() != 7 {
                return Ok(None);
            }
            let Ok(b) = t.get_item(6)?.cast_into_exact::<PyBytes>() else {
                return Ok(None);
            };
            row = [
                t.get_item(0)?,
                t.get_item(1)?,
                t.get_item(2)?,
                t.get_item(3)?,
                t.get_item(4)?,
                t.get_item(5)?,
            ];
            canonical = b;
            body = canonical.as_bytes();
        } else {
            made.clear();
            let Some(r) = event_row(
                &event,
                event_type,
                data_type,
                &mut shapes,
                &mut top,
                &mut data,
                &mut made,
            )?
            else {
                return Ok(None);
            };
            row = r;
            body = &made;
        }
        let leaf = PyByteArray::new(py, &leaf_hash(body)).into_any();
        let body = PyByteArray::new(py, body).into_any();
        let [event_id, stamp, principal, zone, action, decision] = row;
        if with_facets {
            let facet = [principal, zone, action, decision];
            if !facet.iter().all(|v| v.is_exact_instance_of::<PyString>()) {
                return Ok(None);
            }
            let same = last
                .as_ref()
                .is_some_and(|(f, _)| f.iter().zip(&facet).all(|(a, b)| a.is(b)));
            if !same {
                let key = PyTuple::new(py, facet.iter())?.into_any();
                let id = match facet_ids.get_item(&key)? {
                    Some(id) => id,
                    None => key,
                };
                last = Some((facet, id));
            }
            let Some((_, id)) = &last else {
                return Ok(None);
            };
            unresolved |= id.is_instance_of::<PyTuple>();
            params.extend([event_id, stamp, id.clone(), leaf, body]);
        } else {
            params.extend([
                event_id, stamp, principal, zone, action, decision, leaf, body,
            ]);
        }
    }
    Ok(Some((PyList::new(py, params)?, unresolved)))
}

/// The bytes of an exact bytes or bytearray object of 32 bytes.
fn hash32(v: &Bound<'_, PyAny>) -> Option<[u8; 32]> {
    if let Ok(b) = v.cast_exact::<PyBytes>() {
        return b.as_bytes().try_into().ok();
    }
    let b = v.cast_exact::<PyByteArray>().ok()?;
    // SAFETY: the bytes are copied out at once, with no Python code running meanwhile.
    unsafe { b.as_bytes() }.try_into().ok()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `CompactRange.extend` of a tree of `size` leaves with the frontier `hashes` (largest
/// subtree first) by `leaves`: returns the new frontier and the perfect subtrees completed at
/// `min_level` or above as `(level, index, hash)`, level by level, in the order of the Python
/// reference. None when a hash is not 32 bytes of bytes or bytearray.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn compact_extend<'py>(
    py: Python<'py>,
    hashes: &Bound<'py, PyList>,
    size: u64,
    leaves: &Bound<'py, PyList>,
    min_level: u32,
) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
    let mut stack = Vec::with_capacity(hashes.len() + 64);
    for h in hashes.iter() {
        let Some(h) = hash32(&h) else { return Ok(None) };
        stack.push(h);
    }
    let mut level = Vec::with_capacity(leaves.len() + 1);
    for h in leaves.iter() {
        let Some(h) = hash32(&h) else { return Ok(None) };
        level.push(h);
    }
    let mut completed: Vec<(u32, u64, [u8; 32])> = Vec::new();
    let mut kept = Vec::new();
    let mut first = size;
    let mut height = 0u32;
    while !level.is_empty() {
        if first & 1 == 1 {
            let Some(h) = stack.pop() else {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "the frontier does not match the tree size",
                ));
            };
            level.insert(0, h);
            first -= 1;
        }
        if level.len() & 1 == 1 {
            kept.extend(level.pop());
        }
        level = level
            .chunks_exact(2)
            .map(|p| node_hash(&p[0], &p[1]))
            .collect();
        height += 1;
        first >>= 1;
        if height >= min_level {
            completed.extend(level.iter().zip(first..).map(|(h, i)| (height, i, *h)));
        }
    }
    stack.extend(kept.into_iter().rev());
    let frontier = PyList::new(py, stack.iter().map(|h| PyBytes::new(py, h)))?;
    let nodes = PyList::new(
        py,
        completed
            .iter()
            .map(|(l, i, h)| (*l, *i, PyBytes::new(py, h)).into_pyobject(py))
            .collect::<PyResult<Vec<_>>>()?,
    )?;
    Ok(Some((frontier, nodes)))
}

/// The cut canonical bytes of a flow-transfer template (`events._Shell`).
struct Shell {
    first: Vec<u8>,
    between: Vec<u8>,
    before_id: Vec<u8>,
    before_time: Vec<u8>,
    tail: Vec<u8>,
    after_hash: Vec<u8>,
}

/// `events.flow_transfers`' loop over a batch of `(partition, offset, content, outcome,
/// reason)` records: a `canonical_type` event per record, or None for a record to be made
/// by Python (its fields are not plainly valid, or `shell_for(outcome, reason, has_content)`
/// gives None for its template). Each record's id takes 10 bytes of `random` (at `10 * k`);
/// its id and time are made from `clock()` (Unix nanoseconds, read per record) as
/// `events._uuid7` and `events._format_ns` make them, the time from `second_prefix(second)`,
/// or the time is `when`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn flow_events<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyList>,
    shell_for: &Bound<'py, PyAny>,
    canonical_type: &Bound<'py, PyType>,
    principal: &Bound<'py, PyAny>,
    zone: &Bound<'py, PyAny>,
    action: &Bound<'py, PyAny>,
    when: Option<&Bound<'py, PyString>>,
    clock: &Bound<'py, PyAny>,
    second_prefix: &Bound<'py, PyAny>,
    random: &[u8],
) -> PyResult<Bound<'py, PyList>> {
    let tuple_new = py.get_type::<PyTuple>().getattr(intern!(py, "__new__"))?;
    let fixed_stamp = match when {
        Some(w) => Some((w.clone().into_any(), w.to_str()?.as_bytes().to_vec())),
        None => None,
    };
    // (outcome, reason, has content) -> the template's shell (None: Python's path)
    let mut shells: Vec<(String, Option<String>, bool, Option<Shell>)> = Vec::new();
    let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(records.len());
    let (mut ms_start, mut ms_end, mut sec_start, mut sec_end) = (0u64, 0u64, 0u64, 0u64);
    let mut id_prefix: Vec<u8> = Vec::new();
    let mut second: Vec<u8> = Vec::new();
    let mut body = Vec::with_capacity(640);
    for (k, record) in records.iter().enumerate() {
        let Some(chunk) = random.get(10 * k..10 * k + 10) else {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "not enough random bytes",
            ));
        };
        let Ok(record) = record.cast_exact::<PyTuple>() else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let fields = if record.len() == 5 {
            Some(record.iter().collect::<Vec<_>>())
        } else {
            None
        };
        let Some([partition, offset, content, outcome, reason]) =
            fields.and_then(|f| <[_; 5]>::try_from(f).ok())
        else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let number = |v: &Bound<'py, PyAny>| -> Option<i64> {
            if !v.is_exact_instance_of::<PyInt>() {
                return None;
            }
            v.extract::<i64>()
                .ok()
                .filter(|n| (0..=MAX_INT).contains(n))
        };
        let (Some(partition), Some(offset)) = (number(&partition), number(&offset)) else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let content_bytes = if content.is_none() {
            None
        } else if let Ok(c) = content.cast_exact::<PyBytes>() {
            Some(c.as_bytes())
        } else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let Ok(outcome_str) = outcome.cast_exact::<PyString>() else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let Ok(outcome_text) = outcome_str.to_str() else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let reason_text = if reason.is_none() {
            None
        } else {
            match reason
                .cast_exact::<PyString>()
                .ok()
                .and_then(|r| r.to_str().ok())
            {
                Some(r) => Some(r.to_owned()),
                None => {
                    out.push(py.None().into_bound(py));
                    continue;
                }
            }
        };
        let has_content = content_bytes.is_some();
        let at = match shells
            .iter()
            .position(|(o, r, c, _)| o == outcome_text && *r == reason_text && *c == has_content)
        {
            Some(at) => at,
            None => {
                let got = shell_for.call1((&outcome, &reason, has_content))?;
                let shell = if got.is_none() {
                    None
                } else {
                    let parts: Vec<Vec<u8>> = got.extract()?;
                    let Ok([first, between, before_id, before_time, tail, after_hash]) =
                        <[Vec<u8>; 6]>::try_from(parts)
                    else {
                        return Err(pyo3::exceptions::PyValueError::new_err(
                            "a shell has six parts",
                        ));
                    };
                    Some(Shell {
                        first,
                        between,
                        before_id,
                        before_time,
                        tail,
                        after_hash,
                    })
                };
                shells.push((outcome_text.to_owned(), reason_text, has_content, shell));
                shells.len() - 1
            }
        };
        let Some(shell) = &shells[at].3 else {
            out.push(py.None().into_bound(py));
            continue;
        };
        let now_ns: u64 = clock.call0()?.extract()?;
        if !(ms_start..ms_end).contains(&now_ns) {
            let ms = now_ns / 1_000_000;
            ms_start = ms * 1_000_000;
            ms_end = ms_start + 1_000_000;
            let stamp = ms & 0xFFFF_FFFF_FFFF;
            id_prefix.clear();
            write!(id_prefix, "{:08x}-{:04x}-7", stamp >> 16, stamp & 0xFFFF)?;
            if !(sec_start..sec_end).contains(&now_ns) {
                let sec = now_ns / 1_000_000_000;
                sec_start = sec * 1_000_000_000;
                sec_end = sec_start + 1_000_000_000;
                second = second_prefix
                    .call1((sec,))?
                    .extract::<String>()?
                    .into_bytes();
            }
        }
        // The id: rand_a (3 hex digits), the variant digit (binary 10 and two random bits),
        // then 3 and 12 more hex digits, as `events._uuid7` lays them out.
        let mut hex = [0u8; 20];
        for (i, b) in chunk.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        let mut event_id = id_prefix.clone();
        event_id.extend_from_slice(&hex[0..3]);
        event_id.push(b'-');
        event_id.push(b"89ab"[usize::from(hex_value(hex[3]) & 3)]);
        event_id.extend_from_slice(&hex[4..7]);
        event_id.push(b'-');
        event_id.extend_from_slice(&hex[7..19]);
        let stamp_text: Vec<u8>;
        let stamp_bytes: &[u8] = match &fixed_stamp {
            Some((_, b)) => b,
            None => {
                let mut s = second.clone();
                write!(s, ".{:06}Z", (now_ns - sec_start) / 1000)?;
                stamp_text = s;
                &stamp_text
            }
        };
        body.clear();
        body.extend_from_slice(&shell.first);
        if let Some(c) = content_bytes {
            for b in Sha256::digest(c).iter() {
                body.push(HEX[usize::from(b >> 4)]);
                body.push(HEX[usize::from(b & 0xf)]);
            }
            body.extend_from_slice(&shell.after_hash);
        }
        write_int(&mut body, offset);
        body.extend_from_slice(&shell.between);
        write_int(&mut body, partition);
        body.extend_from_slice(&shell.before_id);
        body.extend_from_slice(&event_id);
        body.extend_from_slice(&shell.before_time);
        body.extend_from_slice(stamp_bytes);
        body.extend_from_slice(&shell.tail);
        let id_obj = ascii(py, &event_id)?.into_any();
        let stamp_obj = match &fixed_stamp {
            Some((w, _)) => w.clone(),
            None => ascii(py, stamp_bytes)?.into_any(),
        };
        let items = PyTuple::new(
            py,
            [
                id_obj,
                stamp_obj,
                principal.clone(),
                zone.clone(),
                action.clone(),
                outcome.clone(),
                PyBytes::new(py, &body).into_any(),
            ],
        )?;
        out.push(tuple_new.call1((canonical_type, items))?);
    }
    PyList::new(py, out)
}

/// A str of ASCII bytes (ids and times made here).
fn ascii<'py>(py: Python<'py>, text: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let text = std::str::from_utf8(text)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(PyString::new(py, text))
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}
