//! Exposes PyO3's `Py_3_11` / `Py_LIMITED_API` cfgs, which decide whether `get` can hand out a
//! zero-copy buffer.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
