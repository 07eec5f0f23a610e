//! The header block of a stored record, as `_pack_headers` of
//! `trustzones/streams/_embedded.py` lays it out: per header, the name's and the value's
//! lengths (`>HI`), the name in UTF-8, the value. The bytes are identical; None for what it
//! leaves to Python (a container other than a tuple or list, a header other than a tuple of
//! a `str` and `bytes`, a name that is not valid UTF-8, a length the layout cannot hold),
//! which then packs it, or raises, as before.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

fn push_header(out: &mut Vec<u8>, header: &Bound<'_, PyAny>) -> Option<()> {
    let pair = header.cast_exact::<PyTuple>().ok()?;
    if pair.len() != 2 {
        return None;
    }
    let name = pair.get_item(0).ok()?;
    let value = pair.get_item(1).ok()?;
    let name = name.cast_exact::<PyString>().ok()?.to_str().ok()?.as_bytes();
    let value = value.cast_exact::<PyBytes>().ok()?.as_bytes();
    let name_len = u16::try_from(name.len()).ok()?;
    let value_len = u32::try_from(value.len()).ok()?;
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(&value_len.to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    Some(())
}

/// `_pack_headers(headers)`, or None (see the module's comment).
#[pyfunction]
pub fn pack_headers<'py>(py: Python<'py>, headers: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(256);
    if let Ok(t) = headers.cast_exact::<PyTuple>() {
        for h in t.iter() {
            push_header(&mut out, &h)?;
        }
    } else if let Ok(l) = headers.cast_exact::<PyList>() {
        for h in l.iter() {
            push_header(&mut out, &h)?;
        }
    } else {
        return None;
    }
    Some(PyBytes::new(py, &out))
}
