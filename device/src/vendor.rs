//! Loading a vendor runtime at run time: the library and its symbols, with errors that
//! name what is missing.

use crate::error::{DeviceError, Result};

/// Opens the first of `names` that loads; the error names every one tried and `hint`.
pub(crate) fn load(
    backend: &'static str,
    names: &[&str],
    hint: &str,
) -> Result<libloading::Library> {
    let mut reasons = Vec::new();
    for name in names {
        // SAFETY: loading a vendor runtime runs its initialisers; it is the library the
        // operator asked for by choosing this backend.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return Ok(lib),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    Err(DeviceError::LibraryMissing {
        backend,
        library: names.join(" or "),
        reason: format!("{} ({hint})", reasons.join("; ")),
    })
}

/// Looks up `name` (without its NUL) as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the symbol's true C signature.
pub(crate) unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    backend: &'static str,
    library: &str,
    name: &str,
) -> Result<T> {
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    // SAFETY: the caller vouches for the type; the pointer is copied out and used only
    // while the owning backend keeps `lib` loaded.
    unsafe { lib.get::<T>(&cname) }
        .map(|s| *s)
        .map_err(|e| DeviceError::LibraryMissing {
            backend,
            library: library.to_string(),
            reason: format!("symbol {name} missing (runtime too old?): {e}"),
        })
}

/// [`symbol`] trying each name in turn (versioned entry points such as `_v2`).
///
/// # Safety
/// As [`symbol`], for every name.
pub(crate) unsafe fn symbol_of<T: Copy>(
    lib: &libloading::Library,
    backend: &'static str,
    library: &str,
    names: &[&str],
) -> Result<T> {
    let mut last = None;
    for name in names {
        // SAFETY: forwarded.
        match unsafe { symbol(lib, backend, library, name) } {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one symbol name"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_library_is_named_with_the_hint() {
        let names = ["libstrata-absent-vendor.so.1"];
        let Err(e) = super::load("cuda", &names, "install the driver") else {
            panic!("loaded a library that does not exist");
        };
        let msg = e.to_string();
        assert_eq!(e.kind(), "library_missing");
        assert!(msg.contains("libstrata-absent-vendor.so.1"), "{msg}");
        assert!(msg.contains("install the driver"), "{msg}");
        assert!(msg.starts_with("device backend cuda"), "{msg}");
    }
}
