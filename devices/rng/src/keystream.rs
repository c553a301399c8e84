//! `Keystream`: the ChaCha20 keystream (RFC 8439) the generator hands out, computed by
//! RustCrypto's `chacha20` crate, which picks its AVX-512, AVX2 or SSE2 code at run
//! time.

use std::io;

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;

/// Bytes in one ChaCha20 block.
pub const BLOCK_LEN: usize = 64;

/// The keystream of one 256-bit key and 96-bit nonce, from a block counter on.
///
/// # Example
/// ```
/// use vhost_user_sync_rng::keystream::Keystream;
/// let mut a = Keystream::new(&[7; 32], &[0; 12], 0);
/// let mut b = Keystream::new(&[7; 32], &[0; 12], 1);
/// let (mut x, mut y) = ([0u8; 128], [0u8; 64]);
/// a.fill(&mut x)?;
/// b.fill(&mut y)?;
/// assert_eq!(x[64..], y); // block 1 of the same stream
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Keystream(ChaCha20);

impl Keystream {
    /// The stream of `key` and `nonce`, starting at block `counter`.
    pub fn new(key: &[u8; 32], nonce: &[u8; 12], counter: u32) -> Self {
        let mut cipher = ChaCha20::new(key.into(), nonce.into());
        cipher.seek(u64::from(counter) * BLOCK_LEN as u64);
        Keystream(cipher)
    }

    /// Overwrites `out` with the next `out.len()` bytes of the stream. Fails only past
    /// the stream's end (2^32 blocks, 256 GiB), which the generator, rekeying every
    /// 16 KiB, never reaches.
    pub fn fill(&mut self, out: &mut [u8]) -> io::Result<()> {
        self.0
            .try_write_keystream(out)
            .map_err(|_| io::Error::other("the ChaCha20 keystream of this key is used up"))
    }
}

impl std::fmt::Debug for Keystream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystream").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn key_0_to_31() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    // RFC 8439, 2.3.2: the block function test vector.
    #[test]
    fn block_test_vector() {
        let nonce = [0, 0, 0, 9, 0, 0, 0, 0x4a, 0, 0, 0, 0];
        let mut out = [0u8; 64];
        Keystream::new(&key_0_to_31(), &nonce, 1)
            .fill(&mut out)
            .expect("keystream");
        let want = hex("10 f1 e7 e4 d1 3b 59 15 50 0f dd 1f a3 20 71 c4
             c7 d1 f4 c7 33 c0 68 03 04 22 aa 9a c3 d4 6c 4e
             d2 82 64 46 07 9f aa 09 14 c2 d7 05 d9 8b 02 a2
             b5 12 9c d1 de 16 4e b9 cb d0 83 e8 a2 50 3c 4e");
        assert_eq!(out.to_vec(), want);
    }

    // RFC 8439, 2.4.2: the keystream that encrypts the "sunscreen" plaintext, blocks 1
    // and 2 (the first 114 bytes), recovered as ciphertext XOR plaintext.
    #[test]
    fn keystream_test_vector() {
        let nonce = [0, 0, 0, 0, 0, 0, 0, 0x4a, 0, 0, 0, 0];
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let cipher = hex("6e 2e 35 9a 25 68 f9 80 41 ba 07 28 dd 0d 69 81
             e9 7e 7a ec 1d 43 60 c2 0a 27 af cc fd 9f ae 0b
             f9 1b 65 c5 52 47 33 ab 8f 59 3d ab cd 62 b3 57
             16 39 d6 24 e6 51 52 ab 8f 53 0c 35 9f 08 61 d8
             07 ca 0d bf 50 0d 6a 61 56 a3 8e 08 8a 22 b6 5e
             52 bc 51 4d 16 cc f8 06 81 8c e9 1a b7 79 37 36
             5a f9 0b bf 74 a3 5b e6 b4 0b 8e ed f2 78 5e 42
             87 4d");
        let mut ks = vec![0u8; plain.len()];
        Keystream::new(&key_0_to_31(), &nonce, 1)
            .fill(&mut ks)
            .expect("keystream");
        let enc: Vec<u8> = plain.iter().zip(&ks).map(|(p, k)| p ^ k).collect();
        assert_eq!(enc, cipher);
    }

    /// Output in pieces of any length (partial blocks, the crate's wide batches) is one
    /// stream: the same bytes as one call.
    #[test]
    fn pieces_continue_one_stream() {
        let (key, nonce) = ([0x5a; 32], [3; 12]);
        let mut whole = vec![0u8; 64 * 40];
        Keystream::new(&key, &nonce, 7)
            .fill(&mut whole)
            .expect("keystream");
        let mut s = Keystream::new(&key, &nonce, 7);
        let mut pieces = Vec::new();
        for len in [
            1,
            63,
            64 * 8,
            64 * 4 + 3,
            64 * 12,
            64 * 40 - 1 - 63 - 64 * 24 - 3,
        ] {
            let mut b = vec![0u8; len];
            s.fill(&mut b).expect("keystream");
            pieces.extend_from_slice(&b);
        }
        assert_eq!(pieces, whole);
    }

    #[test]
    fn the_end_of_the_stream_is_an_error_not_a_panic() {
        let mut s = Keystream::new(&[1; 32], &[2; 12], u32::MAX);
        let mut out = [0u8; 64 * 2];
        assert!(s.fill(&mut out).is_err());
    }
}
