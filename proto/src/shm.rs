//! The descriptor exchange of the shared-memory transport (the bytes only; the socket work
//! is the server's `net::shm` and the client's `transport::shm`).
//!
//! After the QUIC handshake offered it ([`crate::msg::ShmOffer`]), a same-host client
//! connects to the offer's Unix `SOCK_SEQPACKET` socket, so every packet below arrives
//! whole and alone:
//!
//! ```text
//! client -> server   ticket: [u8; TICKET_LEN]
//! server -> client   0x00 | count u16 LE              + SCM_RIGHTS: `count` descriptors
//!                    ... repeated until every segment of the offer was sent, in order
//!                or  0x01 | UTF-8 reason              (refused; the server closes)
//! ```
//!
//! At most [`MAX_FDS_PER_PACKET`] descriptors travel in one packet (the kernel caps one
//! message at 253).

use crate::{Error, ErrorCode, Result};

/// Bytes of a session's ticket.
pub const TICKET_LEN: usize = 16;

/// Descriptors sent in one packet at most.
pub const MAX_FDS_PER_PACKET: usize = 64;

/// Longest packet either side sends (a refusal's reason is cut to fit).
pub const MAX_PACKET_LEN: usize = 512;

const DESCRIPTORS: u8 = 0;
const REFUSED: u8 = 1;

/// One packet from the server, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `count` descriptors ride with this packet.
    Descriptors {
        /// How many.
        count: u16,
    },
    /// The server will not share its segments with this peer, and why.
    Refused(&'a str),
}

/// The packet that carries `count` descriptors.
pub fn encode_descriptors(count: u16) -> [u8; 3] {
    let [a, b] = count.to_le_bytes();
    [DESCRIPTORS, a, b]
}

/// The packet that refuses, with `reason` (cut at a character boundary to fit a packet).
pub fn encode_refusal(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_PACKET_LEN - 1);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut packet = Vec::with_capacity(end + 1);
    packet.push(REFUSED);
    packet.extend_from_slice(&reason.as_bytes()[..end]);
    packet
}

/// Reads one server packet; a malformed one is a `Protocol` error.
pub fn decode_reply(packet: &[u8]) -> Result<Reply<'_>> {
    match packet {
        [DESCRIPTORS, a, b] => Ok(Reply::Descriptors {
            count: u16::from_le_bytes([*a, *b]),
        }),
        [REFUSED, reason @ ..] => Ok(Reply::Refused(
            std::str::from_utf8(reason).unwrap_or("(reason not UTF-8)"),
        )),
        _ => Err(Error::new(
            ErrorCode::Protocol,
            format!("malformed descriptor packet of {} bytes", packet.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        for count in [0u16, 1, 64, u16::MAX] {
            let packet = encode_descriptors(count);
            assert_eq!(decode_reply(&packet), Ok(Reply::Descriptors { count }));
        }
        let packet = encode_refusal("wrong ticket");
        assert_eq!(decode_reply(&packet), Ok(Reply::Refused("wrong ticket")));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character() {
        let reason = "é".repeat(MAX_PACKET_LEN);
        let packet = encode_refusal(&reason);
        assert!(packet.len() <= MAX_PACKET_LEN);
        let Ok(Reply::Refused(cut)) = decode_reply(&packet) else {
            panic!("not a refusal");
        };
        assert!(reason.starts_with(cut) && !cut.is_empty());
    }

    #[test]
    fn malformed_packets_are_protocol_errors() {
        for packet in [&[][..], &[0], &[0, 1], &[0, 1, 2, 3], &[7, 1, 2]] {
            let e = decode_reply(packet).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Protocol, "{packet:?}");
        }
    }
}
