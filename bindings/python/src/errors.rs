//! `piecestore::Error` → the Python exception classes of `piecestore/_exceptions.py`.
//!
//! The classes live in Python so that they can inherit from two bases (`PieceNotFound` is also a
//! `KeyError`, `InvalidKey` also a `ValueError`); this module only instantiates them.

use piecestore::{Error, ErrorKind};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "PieceNotFound",
        ErrorKind::AlreadyExists => "PieceExists",
        ErrorKind::InvalidKey => "InvalidKey",
        ErrorKind::InvalidRange => "InvalidRange",
        ErrorKind::InvalidConfig => "ConfigError",
        ErrorKind::Corrupt => "CorruptPiece",
        ErrorKind::Unauthorized => "Unauthorized",
        ErrorKind::Backend => "BackendError",
        ErrorKind::Closed => "StoreClosed",
        ErrorKind::BucketNotFound => "BucketNotFound",
        _ => "PieceStoreError",
    }
}

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = MODULE.get_or_try_init(py, || {
        py.import("piecestore._exceptions").map(Bound::unbind)
    })?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

fn build(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let cls = class(py, class_name(e.kind()))?;
    let exc = cls.call1((e.to_string(),))?;
    exc.setattr("code", e.kind().as_str())?;
    exc.setattr("key", e.key())?;
    exc.setattr("backend", e.backend())?;
    exc.setattr("retryable", e.is_retryable())?;
    Ok(PyErr::from_value(exc))
}

/// The Python exception for a core error, with `.code`, `.key`, `.backend` and `.retryable`.
pub fn to_py_with(py: Python<'_>, e: Error) -> PyErr {
    build(py, &e).unwrap_or_else(|_| PyRuntimeError::new_err(e.to_string()))
}

/// As [`to_py_with`], attaching to the interpreter (for callers without a `Python` token: the
/// error path of blocking calls after the GIL was released, and async tasks).
pub fn to_py(e: Error) -> PyErr {
    Python::attach(|py| to_py_with(py, e))
}
