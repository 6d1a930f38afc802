use std::borrow::Cow;
use std::fmt;

/// A stable, numbered error code. The numbers are part of the wire protocol and of the
/// command-line client's output: never renumber, only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The key is not stored, or is still being written (not yet visible).
    NotFound = 1,
    /// A complete object with this key exists; values are immutable. Clients treat this as
    /// success for puts: the same block hash means the same bytes.
    AlreadyExists = 2,
    /// Another writer holds a live reservation for this key.
    Busy = 3,
    /// No tier can hold the value, even after evicting everything evictable.
    NoSpace = 4,
    /// A read lease or write reservation ended before the operation completed.
    LeaseExpired = 5,
    /// The key is empty or longer than the limit.
    InvalidKey = 6,
    /// An argument is out of range or inconsistent (for example a zero length).
    InvalidArgument = 7,
    /// A value, batch or header is larger than any limit allows.
    TooLarge = 8,
    /// Only the writer that reserved a key may commit or revoke it.
    NotWriter = 9,
    /// A bug or an unexpected system failure; the message says which.
    Internal = 10,
    /// The object is leased by a reader and the operation was not forced.
    Leased = 11,
    /// A request frame broke the wire protocol: wrong version, unknown opcode, unknown
    /// flags, or a header or payload that is malformed or does not match what it announced.
    Protocol = 12,
    /// The connection has not presented the server's auth token, or presented a wrong one.
    Unauthorized = 13,
    /// The operation did not finish within its time bound (connect or transfer timeout).
    Timeout = 14,
    /// The server cannot be reached, or the connection to it was lost or is shutting down.
    Unavailable = 15,
    /// Stored bytes failed their checksum when read (a damaged ssd record). The object has
    /// been dropped; it is never served.
    Corrupt = 16,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Busy,
        ErrorCode::NoSpace,
        ErrorCode::LeaseExpired,
        ErrorCode::InvalidKey,
        ErrorCode::InvalidArgument,
        ErrorCode::TooLarge,
        ErrorCode::NotWriter,
        ErrorCode::Internal,
        ErrorCode::Leased,
        ErrorCode::Protocol,
        ErrorCode::Unauthorized,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Corrupt,
    ];

    /// The stable number of this code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code with this number, if there is one.
    pub fn from_u16(n: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_u16() == n)
    }

    /// The code's stable name, as printed in logs and by the command-line client.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NotFound",
            ErrorCode::AlreadyExists => "AlreadyExists",
            ErrorCode::Busy => "Busy",
            ErrorCode::NoSpace => "NoSpace",
            ErrorCode::LeaseExpired => "LeaseExpired",
            ErrorCode::InvalidKey => "InvalidKey",
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::TooLarge => "TooLarge",
            ErrorCode::NotWriter => "NotWriter",
            ErrorCode::Internal => "Internal",
            ErrorCode::Leased => "Leased",
            ErrorCode::Protocol => "Protocol",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Corrupt => "Corrupt",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// An error with a stable code and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A result whose error is a strata [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        // The numbers are a protocol: this table is the contract.
        let expected = [
            (ErrorCode::NotFound, 1),
            (ErrorCode::AlreadyExists, 2),
            (ErrorCode::Busy, 3),
            (ErrorCode::NoSpace, 4),
            (ErrorCode::LeaseExpired, 5),
            (ErrorCode::InvalidKey, 6),
            (ErrorCode::InvalidArgument, 7),
            (ErrorCode::TooLarge, 8),
            (ErrorCode::NotWriter, 9),
            (ErrorCode::Internal, 10),
            (ErrorCode::Leased, 11),
            (ErrorCode::Protocol, 12),
            (ErrorCode::Unauthorized, 13),
            (ErrorCode::Timeout, 14),
            (ErrorCode::Unavailable, 15),
            (ErrorCode::Corrupt, 16),
        ];
        for (code, n) in expected {
            assert_eq!(code.as_u16(), n);
            assert_eq!(ErrorCode::from_u16(n), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(17), None);
    }

    #[test]
    fn display_names_code_and_message() {
        let e = Error::new(ErrorCode::Busy, "key is being written by another writer");
        assert_eq!(
            e.to_string(),
            "Busy (3): key is being written by another writer"
        );
    }
}
