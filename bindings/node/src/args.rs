//! Arguments from JavaScript, checked by hand so that a wrong type throws a `TypeError` (code
//! `ERR_INVALID_ARG_TYPE`, as Node's own APIs do) whose message names the call, the argument,
//! what it accepts and what it got: `put: key must be a string, got number`. A number of the
//! right type but out of range throws a `RangeError` (code `ERR_OUT_OF_RANGE`). napi's own
//! conversions would throw a plain `Error` with codes such as `StringExpected`.
//!
//! Messages name the type of what was given, never its value (it could be a secret).

use std::fmt::Display;

use napi::bindgen_prelude::*;
use napi::{check_status, sys};

use crate::buffer::Data;

/// What `data` arguments accept, as messages say it.
pub const DATA: &str = "a Buffer, Uint8Array or string";

/// One call's argument reader: every error it makes names the call.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    env: &'a Env,
    call: &'static str,
}

impl<'a> Args<'a> {
    /// A reader for the arguments of `call` (the name JavaScript calls it by: `put`,
    /// `PieceStore.open`).
    pub fn new(env: &'a Env, call: &'static str) -> Self {
        Args { env, call }
    }

    /// The environment of the call.
    pub fn env(&self) -> &'a Env {
        self.env
    }

    /// A `TypeError`: `{call}: {what} must be {expected}, got {the type of got}`.
    pub fn type_error(&self, what: impl Display, expected: &str, got: &Unknown<'_>) -> Error {
        let msg = format!(
            "{}: {what} must be {expected}, got {}",
            self.call,
            describe(got)
        );
        let err = Error::new("ERR_INVALID_ARG_TYPE", msg);
        Error::from(JsTypeError::from(err).into_unknown(*self.env))
    }

    /// A `RangeError`: `{call}: {what} must be {expected}, got {got}`.
    pub fn range_error(&self, what: impl Display, expected: &str, got: f64) -> Error {
        let msg = format!("{}: {what} must be {expected}, got {got}", self.call);
        let err = Error::new("ERR_OUT_OF_RANGE", msg);
        Error::from(JsRangeError::from(err).into_unknown(*self.env))
    }

    /// A string.
    pub fn string(&self, v: Unknown<'_>, what: impl Display) -> Result<String> {
        match v.get_type()? {
            ValueType::String => short_string(self.env, &v),
            _ => Err(self.type_error(what, "a string", &v)),
        }
    }

    /// A string, or `None` for `undefined`/`null` (and a missing argument).
    pub fn opt_string(&self, v: Option<Unknown<'_>>, what: impl Display) -> Result<Option<String>> {
        match v {
            Some(v) if !is_nullish(&v)? => self.string(v, what).map(Some),
            _ => Ok(None),
        }
    }

    /// A number (any: `NaN` and fractions included).
    pub fn number(&self, v: Unknown<'_>, what: impl Display) -> Result<f64> {
        match v.get_type()? {
            // SAFETY: the value is a number.
            ValueType::Number => unsafe { v.cast::<f64>() },
            _ => Err(self.type_error(what, "a number", &v)),
        }
    }

    /// A boolean, or `None` for `undefined`/`null`.
    pub fn opt_bool(&self, v: Option<Unknown<'_>>, what: impl Display) -> Result<Option<bool>> {
        let Some(v) = v else { return Ok(None) };
        match v.get_type()? {
            ValueType::Undefined | ValueType::Null => Ok(None),
            // SAFETY: the value is a boolean.
            ValueType::Boolean => unsafe { v.cast::<bool>() }.map(Some),
            _ => Err(self.type_error(what, "a boolean", &v)),
        }
    }

    /// A non-negative integer below `limit` (at most 2^64): a `TypeError` for anything but a
    /// number, a `RangeError` for a fraction, a negative number or one too large.
    pub fn integer(&self, v: Unknown<'_>, what: impl Display, limit: f64) -> Result<u64> {
        let n = self.number(v, &what)?;
        if n.fract() == 0.0 && (0.0..limit).contains(&n) {
            // In range, and a whole number: the conversion is exact.
            return Ok(n as u64);
        }
        let expected = if limit >= U64_LIMIT {
            "a non-negative integer".to_string()
        } else {
            format!("an integer from 0 to {}", limit - 1.0)
        };
        Err(self.range_error(what, &expected, n))
    }

    /// [`Args::integer`], or `None` for `undefined`/`null`.
    pub fn opt_integer(
        &self,
        v: Option<Unknown<'_>>,
        what: impl Display,
        limit: f64,
    ) -> Result<Option<u64>> {
        match v {
            Some(v) if !is_nullish(&v)? => self.integer(v, what, limit).map(Some),
            _ => Ok(None),
        }
    }

    /// An object (not an array, not a function), described as `expected` in the error.
    pub fn object<'v>(
        &self,
        v: Unknown<'v>,
        what: impl Display,
        expected: &str,
    ) -> Result<Object<'v>> {
        if v.get_type()? == ValueType::Object && !v.is_array()? {
            // SAFETY: the value is an object.
            unsafe { v.cast::<Object<'v>>() }
        } else {
            Err(self.type_error(what, expected, &v))
        }
    }

    /// [`Args::object`], or `None` for `undefined`/`null`.
    pub fn opt_object<'v>(
        &self,
        v: Option<Unknown<'v>>,
        what: impl Display,
        expected: &str,
    ) -> Result<Option<Object<'v>>> {
        match v {
            Some(v) if !is_nullish(&v)? => self.object(v, what, expected).map(Some),
            _ => Ok(None),
        }
    }

    /// An array, described as `expected` in the error.
    pub fn array<'v>(
        &self,
        v: Unknown<'v>,
        what: impl Display,
        expected: &str,
    ) -> Result<Array<'v>> {
        if v.is_array()? {
            // SAFETY: the value is an array.
            unsafe { v.cast::<Array<'v>>() }
        } else {
            Err(self.type_error(what, expected, &v))
        }
    }

    /// An array of strings.
    pub fn strings(&self, v: Unknown<'_>, what: &str) -> Result<Vec<String>> {
        let arr = self.array(v, what, "an array of strings")?;
        let mut out = Vec::with_capacity(arr.len() as usize);
        for i in 0..arr.len() {
            out.push(self.string(item(&arr, i)?, format_args!("{what}[{i}]"))?);
        }
        Ok(out)
    }

    /// A piece's bytes: a `Buffer` or other `Uint8Array`, or a string (stored as UTF-8).
    pub fn data(&self, v: Unknown<'_>, what: impl Display) -> Result<Data> {
        match v.get_type()? {
            // SAFETY: the value is a string.
            ValueType::String => Ok(Either::B(unsafe { v.cast::<String>() }?)),
            ValueType::Object if v.is_typedarray()? => {
                // SAFETY: the value is a typed array; the conversion checks its element type.
                match unsafe { v.cast::<Uint8Array>() } {
                    Ok(a) => Ok(Either::A(a)),
                    Err(_) => Err(self.type_error(what, DATA, &v)),
                }
            }
            _ => Err(self.type_error(what, DATA, &v)),
        }
    }
}

/// Strings up to this many UTF-8 bytes (a Greenfield piece key has under 100) convert in one
/// Node-API call.
const SHORT_STRING: usize = 256;

/// A JavaScript string `v` as UTF-8 (a lone surrogate becomes U+FFFD, as everywhere in
/// Node-API): through a buffer on the stack in one call when it is short, as a key is; napi's
/// own conversion asks for the length first, then copies into a zero-filled heap buffer.
fn short_string(env: &Env, v: &Unknown<'_>) -> Result<String> {
    // Room for a 4-byte character past the limit and the NUL Node-API writes: a string that
    // did not fit comes back cut at a character boundary, longer than the limit.
    let mut buf = [0u8; SHORT_STRING + 4 + 1];
    let mut len = 0;
    check_status!(unsafe {
        sys::napi_get_value_string_utf8(
            env.raw(),
            v.raw(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut len,
        )
    })?;
    if len <= SHORT_STRING
        && let Ok(s) = std::str::from_utf8(&buf[..len])
    {
        return Ok(s.to_owned());
    }
    // SAFETY: the value is a string.
    unsafe { v.cast::<String>() }
}

/// The exclusive upper bound of a `u64`, as a JavaScript number.
pub const U64_LIMIT: f64 = 18_446_744_073_709_551_616.0;

/// The exclusive upper bound of a `u32`, as a JavaScript number.
pub const U32_LIMIT: f64 = 4_294_967_296.0;

/// Whether `v` is `undefined` or `null` (an argument or option left out).
pub fn is_nullish(v: &Unknown<'_>) -> Result<bool> {
    Ok(matches!(
        v.get_type()?,
        ValueType::Undefined | ValueType::Null
    ))
}

/// Item `i` of `arr` (`undefined` for a hole or past its end).
pub fn item<'v>(arr: &Array<'v>, i: u32) -> Result<Unknown<'v>> {
    arr.get_element::<Unknown<'v>>(i)
}

/// The type of `v` as an error message says it: `typeof`'s answer, except `null`, `array`, and
/// the class of a few built-in objects often passed by mistake (`Promise`: a missing `await`;
/// `ArrayBuffer`, `DataView` and typed arrays other than `Uint8Array`: bytes in another form).
/// It never runs JavaScript (no getter of the value is called).
pub fn describe(v: &Unknown<'_>) -> String {
    let kind = match v.get_type() {
        Ok(t) => t,
        Err(_) => return "an unknown value".to_string(),
    };
    let name = match kind {
        ValueType::Undefined => "undefined",
        ValueType::Null => "null",
        ValueType::Boolean => "boolean",
        ValueType::Number => "number",
        ValueType::String => "string",
        ValueType::Symbol => "symbol",
        ValueType::BigInt => "bigint",
        ValueType::Function => "function",
        ValueType::External => "external",
        ValueType::Object => return describe_object(v),
        _ => "an unknown value",
    };
    name.to_string()
}

fn describe_object(v: &Unknown<'_>) -> String {
    let is = |check: fn(&Unknown<'_>) -> Result<bool>| check(v).unwrap_or(false);
    if is(|v| v.is_array()) {
        "array".into()
    } else if is(|v| v.is_typedarray()) {
        // SAFETY: the value is a typed array.
        match unsafe { v.cast::<TypedArray<'_>>() } {
            Ok(a) if a.typed_array_type == TypedArrayType::Uint8 && is_node_buffer(v) => {
                "Buffer".into()
            }
            Ok(a) if a.typed_array_type != TypedArrayType::Unknown => {
                format!("{}Array", a.typed_array_type.as_ref())
            }
            _ => "a typed array".into(),
        }
    } else if is(|v| v.is_arraybuffer()) {
        "ArrayBuffer".into()
    } else if is(|v| v.is_dataview()) {
        "DataView".into()
    } else if is(|v| v.is_promise()) {
        "Promise".into()
    } else if is(|v| v.is_date()) {
        "Date".into()
    } else {
        "object".into()
    }
}

/// Whether a `Uint8Array` is a Node `Buffer` (`napi_is_buffer` says yes for any typed array).
fn is_node_buffer(v: &Unknown<'_>) -> bool {
    let env = Env::from_raw(v.value().env);
    let Ok(buffer) = env
        .get_global()
        .and_then(|g| g.get_named_property_unchecked::<Unknown<'_>>("Buffer"))
    else {
        return false;
    };
    if !matches!(buffer.get_type(), Ok(ValueType::Function)) {
        // No global `Buffer` (deleted): `instanceof` would throw.
        return false;
    }
    // SAFETY: the value is a function.
    match unsafe { buffer.cast::<Function<'_, (), Unknown<'_>>>() } {
        Ok(b) => v.instanceof(b).unwrap_or(false),
        Err(_) => false,
    }
}
