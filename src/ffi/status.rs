//! Status codes, the per-thread last-error message, and the guard every entry point runs in:
//! errors become statuses, panics become `CK_ERR_INTERNAL` without printing anything.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use crate::error::{Error, Result};

/// Success.
pub const CK_OK: i32 = 0;
/// An argument is out of range: a null or misaligned pointer, a bad dtype code, tau <= 0, an id
/// out of range, a non-finite feature...
pub const CK_ERR_INVALID_ARGUMENT: i32 = 1;
/// An argument has the wrong shape or length.
pub const CK_ERR_SHAPE: i32 = 2;
/// libcuda (the NVIDIA driver) could not be loaded.
pub const CK_ERR_NO_DRIVER: i32 = 3;
/// No CUDA device (or not the requested ordinal).
pub const CK_ERR_NO_DEVICE: i32 = 4;
/// The library was built without nvcc: it holds no kernels.
pub const CK_ERR_NOT_COMPILED: i32 = 5;
/// A CUDA driver (or cuBLAS) call failed.
pub const CK_ERR_CUDA: i32 = 6;
/// A bug in the library (a caught panic).
pub const CK_ERR_INTERNAL: i32 = 7;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// Nonzero while this thread runs inside `guard`: the panic hook stays silent then.
    static IN_GUARD: Cell<u32> = const { Cell::new(0) };
    /// Where the last silenced panic happened (the hook sees it; the payload does not carry it).
    static PANIC_LOCATION: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

fn status_of(e: &Error) -> i32 {
    match e {
        Error::InvalidArgument { .. } => CK_ERR_INVALID_ARGUMENT,
        Error::Shape { .. } => CK_ERR_SHAPE,
        Error::NoDriver(_) => CK_ERR_NO_DRIVER,
        Error::NoDevice(_) => CK_ERR_NO_DEVICE,
        Error::KernelsNotCompiled(_) => CK_ERR_NOT_COMPILED,
        Error::Cuda { .. } | Error::Blas { .. } => CK_ERR_CUDA,
        #[allow(unreachable_patterns)]
        _ => CK_ERR_INTERNAL,
    }
}

/// The panic hook is process-global, so it cannot simply be replaced: this one stays silent on
/// threads that are inside `guard` (recording the location for the message) and hands every other
/// panic to the hook that was installed before, so the host program's own panics still print.
fn install_silent_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_with: a panic during thread teardown must not panic again in the hook.
            if IN_GUARD.try_with(Cell::get).unwrap_or(0) > 0 {
                let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                let _ = PANIC_LOCATION.try_with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning its error or panic into a status and the thread's last-error message. A panic
/// prints nothing (see `install_silent_hook`); its message lands in `ck_last_error`.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> i32 {
    install_silent_hook();
    IN_GUARD.with(|g| g.set(g.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    IN_GUARD.with(|g| g.set(g.get() - 1));
    match outcome {
        Ok(Ok(())) => {
            set_last_error("");
            CK_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            status_of(&e)
        }
        Err(panic) => {
            let what =
                panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            let at = PANIC_LOCATION.with(|p| std::mem::take(&mut *p.borrow_mut()));
            let at = if at.is_empty() { String::new() } else { format!(" (at {at})") };
            set_last_error(&format!("internal error (a bug in contrastive-kernels): {what}{at}"));
            CK_ERR_INTERNAL
        }
    }
}

/// The library's version, e.g. "0.1.0" (static storage).
#[no_mangle]
pub extern "C" fn ck_version() -> *const c_char {
    static VERSION: OnceLock<CString> = OnceLock::new();
    VERSION.get_or_init(|| CString::new(env!("CARGO_PKG_VERSION")).unwrap_or_default()).as_ptr()
}

/// The calling thread's message for its last failed call ("" after a success). Valid until the
/// thread's next call into the library.
#[no_mangle]
pub extern "C" fn ck_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A short name for a status code ("CK_OK", "CK_ERR_SHAPE", ...; static storage).
#[no_mangle]
pub extern "C" fn ck_status_name(status: i32) -> *const c_char {
    let name: &'static CStr = match status {
        CK_OK => c"CK_OK",
        CK_ERR_INVALID_ARGUMENT => c"CK_ERR_INVALID_ARGUMENT",
        CK_ERR_SHAPE => c"CK_ERR_SHAPE",
        CK_ERR_NO_DRIVER => c"CK_ERR_NO_DRIVER",
        CK_ERR_NO_DEVICE => c"CK_ERR_NO_DEVICE",
        CK_ERR_NOT_COMPILED => c"CK_ERR_NOT_COMPILED",
        CK_ERR_CUDA => c"CK_ERR_CUDA",
        CK_ERR_INTERNAL => c"CK_ERR_INTERNAL",
        _ => c"unknown status",
    };
    name.as_ptr()
}

/// Test hook (not in the header): panics inside the guard with `message` (NULL: a fixed one), so
/// tests can check that a panic returns `CK_ERR_INTERNAL`, keeps its message and prints nothing.
///
/// # Safety
/// `message` is NULL or a NUL-terminated string.
/// cbindgen:ignore
#[doc(hidden)]
#[no_mangle]
pub unsafe extern "C" fn ck_test_panic(message: *const c_char) -> i32 {
    guard(|| {
        let text = if message.is_null() { "ck_test_panic".into() } else { CStr::from_ptr(message).to_string_lossy().into_owned() };
        panic!("{text}")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn message() -> String {
        // SAFETY: ck_last_error returns a valid C string.
        unsafe { CStr::from_ptr(ck_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn errors_become_statuses_and_messages() {
        assert_eq!(guard(|| Err(Error::shape("x", "2 x 3", "3 x 2"))), CK_ERR_SHAPE);
        assert!(message().contains("`x`"), "{}", message());
        assert_eq!(guard(|| panic!("boom")), CK_ERR_INTERNAL);
        assert!(message().contains("boom") && message().contains("status.rs"), "{}", message());
        assert_eq!(guard(|| Ok(())), CK_OK);
        assert_eq!(message(), "");
        // A panic outside the guard still reaches the previous hook (and the guard's count is back to 0).
        assert_eq!(IN_GUARD.with(Cell::get), 0);
    }
}
