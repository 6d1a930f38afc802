//! The TCP data plane's opening exchange and its proofs (the bytes only; the socket work is
//! the server's `net::data` and the client's `transport::tcp`).
//!
//! The QUIC handshake gives a session a number and a secret
//! ([`crate::msg::DataPlaneOffer`]). A data connection proves it belongs to that session
//! without ever sending the secret:
//!
//! ```text
//! server -> client   MAGIC | version u8 | nonce [u8; NONCE_LEN]          (HELLO_LEN bytes)
//! client -> server   session u64 LE | proof [u8; PROOF_LEN]              (CLAIM_LEN bytes)
//! server -> client   a response frame (crate::wire): bare success, or an error frame,
//!                    after which the server closes the connection
//! ```
//!
//! `proof = HMAC-SHA256(secret, DOMAIN | nonce | session)`. The nonce is fresh per
//! connection, so a proof seen once opens nothing later. After the exchange the connection
//! carries ordinary request frames, [`Opcode::DataGet`](crate::wire::Opcode::DataGet) and
//! [`Opcode::DataPut`](crate::wire::Opcode::DataPut) only, answered in order.

use ring::hmac;

/// ALPN of data connections under TLS (`--data-tls`), distinct from QUIC's
/// ([`crate::wire::ALPN`]) so one certificate cannot be talked into the other protocol.
pub const ALPN: &[u8] = b"strata-data/1";

/// Opens the server's hello, so a client that reached something else says so.
pub const MAGIC: [u8; 4] = *b"STDP";

/// The exchange's version.
pub const VERSION: u8 = 1;

/// Bytes of the server's nonce.
pub const NONCE_LEN: usize = 32;

/// Bytes of a proof.
pub const PROOF_LEN: usize = 32;

/// Bytes of the server's hello.
pub const HELLO_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;

/// Bytes of the client's claim.
pub const CLAIM_LEN: usize = 8 + PROOF_LEN;

/// Bytes of a session secret.
pub const SECRET_LEN: usize = 32;

/// Separates these MACs from any other use of the same key.
const DOMAIN: &[u8] = b"strata data-plane session proof v1";

/// The server's hello carrying `nonce`.
pub fn encode_hello(nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5..].copy_from_slice(nonce);
    out
}

/// The nonce of a server's hello, or why it is not one.
pub fn decode_hello(hello: &[u8; HELLO_LEN]) -> Result<[u8; NONCE_LEN], String> {
    if hello[..4] != MAGIC {
        return Err("the data port does not speak the strata data plane".into());
    }
    if hello[4] != VERSION {
        return Err(format!(
            "data plane version {} (this client speaks {VERSION})",
            hello[4]
        ));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&hello[5..]);
    Ok(nonce)
}

/// Proof that the sender holds `secret`, bound to one connection's `nonce`.
pub fn session_proof(secret: &[u8], nonce: &[u8; NONCE_LEN], session: u64) -> [u8; PROOF_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &proof_input(nonce, session));
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `proof` is right for `secret`, `nonce` and `session` (in constant time).
pub fn verify_session_proof(
    secret: &[u8],
    nonce: &[u8; NONCE_LEN],
    session: u64,
    proof: &[u8],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &proof_input(nonce, session), proof).is_ok()
}

fn proof_input(nonce: &[u8; NONCE_LEN], session: u64) -> Vec<u8> {
    let mut input = Vec::with_capacity(DOMAIN.len() + NONCE_LEN + 8);
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(nonce);
    input.extend_from_slice(&session.to_le_bytes());
    input
}

/// The client's claim: its session and the proof.
pub fn encode_claim(session: u64, proof: &[u8; PROOF_LEN]) -> [u8; CLAIM_LEN] {
    let mut out = [0u8; CLAIM_LEN];
    out[..8].copy_from_slice(&session.to_le_bytes());
    out[8..].copy_from_slice(proof);
    out
}

/// The session and proof of a claim.
pub fn decode_claim(claim: &[u8; CLAIM_LEN]) -> (u64, &[u8]) {
    let mut session = [0u8; 8];
    session.copy_from_slice(&claim[..8]);
    (u64::from_le_bytes(session), &claim[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_for_its_secret_nonce_and_session() {
        let secret = [7u8; SECRET_LEN];
        let nonce = [1u8; NONCE_LEN];
        let proof = session_proof(&secret, &nonce, 42);
        assert!(verify_session_proof(&secret, &nonce, 42, &proof));
        assert!(!verify_session_proof(
            &[8u8; SECRET_LEN],
            &nonce,
            42,
            &proof
        ));
        assert!(!verify_session_proof(
            &secret,
            &[2u8; NONCE_LEN],
            42,
            &proof
        ));
        assert!(!verify_session_proof(&secret, &nonce, 43, &proof));
        assert!(!verify_session_proof(&secret, &nonce, 42, &proof[..16]));
    }

    #[test]
    fn hello_and_claim_round_trip_and_a_stranger_is_named() {
        let nonce = [9u8; NONCE_LEN];
        assert_eq!(decode_hello(&encode_hello(&nonce)), Ok(nonce));
        let mut wrong = encode_hello(&nonce);
        wrong[0] = b'H';
        assert!(decode_hello(&wrong).is_err());
        let proof = [3u8; PROOF_LEN];
        let claim = encode_claim(77, &proof);
        assert_eq!(decode_claim(&claim), (77, &proof[..]));
    }
}
