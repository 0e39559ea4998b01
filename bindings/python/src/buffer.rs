//! Bytes across the boundary: `put` borrows the caller's buffer, `get` hands out the core's
//! `Bytes` as a zero-copy buffer.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Whether this build can export the buffer protocol (stable ABI ≥ 3.11, or a
/// version-specific build).
pub const ZERO_COPY: bool = cfg!(any(Py_3_11, not(Py_LIMITED_API)));

/// A piece's bytes, shared with the store without a copy.
///
/// Supports the buffer protocol (read-only): `memoryview(b)`, `bytes(b)`, `len(b)`,
/// `numpy.frombuffer(b, ...)`, `f.write(b)`, and compares equal to `bytes` with the same content.
#[pyclass(frozen, name = "Buffer", module = "piecestore")]
pub struct Buffer(pub Bytes);

#[pymethods]
impl Buffer {
    /// Exports the bytes, read-only, without copying them.
    ///
    /// # Safety
    /// Called by the interpreter with a valid `view` to fill.
    #[cfg(any(Py_3_11, not(Py_LIMITED_API)))]
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let bytes = &slf.get().0;
        // SAFETY: the view keeps a reference to `slf` (PyBuffer_FillInfo takes one), so the
        // frozen `Bytes` it points into outlives the view; readonly=1 refuses writable requests.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::os::raw::c_void,
                bytes.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// A `bytes` copy.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0)
    }

    /// A `bytes` copy (same as `bytes(b)`).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        if let Ok(b) = other.cast::<Buffer>() {
            return b.get().0 == self.0;
        }
        if let Ok(b) = other.cast::<PyBytes>() {
            return b.as_bytes() == &self.0[..];
        }
        false
    }

    fn __repr__(&self) -> String {
        const SHOWN: usize = 32;
        let head = &self.0[..self.0.len().min(SHOWN)];
        let more = if self.0.len() > SHOWN { "..." } else { "" };
        format!(
            "Buffer({} bytes: {}{more})",
            self.0.len(),
            head.escape_ascii()
        )
    }
}

/// A piece as Python gets it: a [`Buffer`] where the build exports buffers, else `bytes`.
pub struct Piece(pub Bytes);

impl<'py> IntoPyObject<'py> for Piece {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if ZERO_COPY {
            Ok(Bound::new(py, Buffer(self.0))?.into_any())
        } else {
            Ok(PyBytes::new(py, &self.0).into_any())
        }
    }
}

/// The bytes of any bytes-like object, without copying where that is safe.
///
/// - `bytes` and a `Buffer`: shared, no copy (a `bytes` is immutable; the core holds a
///   reference to it, released without the GIL).
/// - Any other buffer (`bytearray`, `memoryview`, numpy arrays): copied once, straight into the
///   core's buffer. Writable ones could change while the GIL is released and then disagree with
///   their checksum; and holding an exported buffer would need the GIL to release it, on
///   whichever runtime thread drops the bytes, which can crash at interpreter exit.
/// - `str` and other non-buffers: `TypeError`.
pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<Buffer>() {
        return Ok(b.get().0.clone());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let backed: pyo3::pybacked::PyBackedBytes = b.clone().into();
        return Ok(Bytes::from_owner(backed));
    }
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "a piece must be bytes-like (bytes, bytearray, memoryview, ...), not str; encode it first",
        ));
    }
    from_buffer(obj)
}

#[cfg(any(Py_3_11, not(Py_LIMITED_API)))]
fn from_buffer(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    let buf = pyo3::buffer::PyUntypedBuffer::get(obj).map_err(|_| not_bytes_like(obj))?;
    if buf.is_c_contiguous() {
        // SAFETY: contiguous and held while we copy, with the GIL held, so nobody writes it.
        let s = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
        return Ok(Bytes::copy_from_slice(s));
    }
    // Strided views: let Python lay them out.
    let b = obj
        .py()
        .import("builtins")?
        .getattr("bytes")?
        .call1((obj,))?;
    from_py(&b)
}

#[cfg(not(any(Py_3_11, not(Py_LIMITED_API))))]
fn from_buffer(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    // Before 3.11 the stable ABI has no buffer access: `memoryview(obj).tobytes()` copies once
    // (and, unlike `bytes(obj)`, refuses an int instead of making that many zero bytes).
    let view = obj
        .py()
        .import("builtins")?
        .getattr("memoryview")?
        .call1((obj,))
        .map_err(|_| not_bytes_like(obj))?;
    from_py(&view.call_method0("tobytes")?)
}

fn not_bytes_like(obj: &Bound<'_, PyAny>) -> PyErr {
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    pyo3::exceptions::PyTypeError::new_err(format!("a piece must be a bytes-like object, not {ty}"))
}
