use std::fmt;

use crate::error::{Error, ErrorCode};
use crate::limits::MAX_KEY_LEN;

/// Checks that `bytes` is a valid key: 1 to [`MAX_KEY_LEN`] bytes of anything.
pub fn validate_key(bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Err(Error::new(ErrorCode::InvalidKey, "key is empty"));
    }
    if bytes.len() > MAX_KEY_LEN {
        return Err(Error::new(
            ErrorCode::InvalidKey,
            format!("key is {} bytes, the limit is {MAX_KEY_LEN}", bytes.len()),
        ));
    }
    Ok(())
}

/// An owned, validated key: opaque bytes, 1 to [`MAX_KEY_LEN`] long.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Box<[u8]>);

impl Key {
    /// Validates and wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Key, Error> {
        let bytes = bytes.into();
        validate_key(&bytes)?;
        Ok(Key(bytes.into_boxed_slice()))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's length in bytes (never zero).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a key has at least one byte. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(s: &str) -> Result<Key, Error> {
        Key::new(s.as_bytes())
    }
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(s: String) -> Result<Key, Error> {
        Key::new(s.into_bytes())
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = Error;
    fn try_from(b: &[u8]) -> Result<Key, Error> {
        Key::new(b)
    }
}

/// Shows printable keys as text and others as hex, so logs stay readable either way.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "Key({s:?})"),
            _ => {
                f.write_str("Key(0x")?;
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(
            Key::new(Vec::new()).unwrap_err().code(),
            ErrorCode::InvalidKey
        );
        assert!(Key::new(vec![0u8; 1]).is_ok());
        assert!(Key::new(vec![7u8; MAX_KEY_LEN]).is_ok());
        let err = Key::new(vec![7u8; MAX_KEY_LEN + 1]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidKey);
        assert!(err.to_string().contains("1025"), "{err}");
    }

    #[test]
    fn debug_is_readable() {
        assert_eq!(
            format!("{:?}", Key::try_from("m@0@ab").unwrap()),
            "Key(\"m@0@ab\")"
        );
        assert_eq!(
            format!("{:?}", Key::new(vec![0u8, 255]).unwrap()),
            "Key(0x00ff)"
        );
    }
}
