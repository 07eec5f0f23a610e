//! `trustzones_native`: the native core of trustzones' DLP part (see `engine.rs`,
//! `transforms.rs` and `tokens.rs`). The Python package stays the reference; this module
//! only makes it faster and must give identical results (tests/dlp/ check that with hypothesis).

mod audit;
mod context;
mod engine;
mod json;
mod keep;
mod records;
mod tokens;
mod transforms;
mod validators;

use pyo3::prelude::*;

/// The text the engine scans for a finite float, `repr(x)`; None for inf and nan (the
/// engine asks Python then). Exposed so that the tests can hold it to `repr`.
#[pyfunction]
fn float_text(x: f64) -> Option<String> {
    engine::float_repr(x)
}

#[pymodule]
fn trustzones_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<transforms::Ff1>()?;
    m.add_class::<transforms::HmacSha256>()?;
    m.add_class::<transforms::PlanExecutor>()?;
    m.add_class::<keep::KeepWalker>()?;
    m.add_class::<keep::PlainMarker>()?;
    m.add_function(wrap_pyfunction!(transforms::mask_ascii, m)?)?;
    m.add_function(wrap_pyfunction!(float_text, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::preserving_token, m)?)?;
    m.add_function(wrap_pyfunction!(records::pack_headers, m)?)?;
    m.add_function(wrap_pyfunction!(audit::audit_rows, m)?)?;
    m.add_function(wrap_pyfunction!(audit::compact_extend, m)?)?;
    m.add_function(wrap_pyfunction!(audit::flow_events, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
