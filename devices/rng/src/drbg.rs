//! `Drbg`: a ChaCha20 generator keyed from the host's entropy source, with fast key
//! erasure, so that the device serves entropy at memory speed instead of one read of
//! the source per request.
//!
//! The construction is the usual one for user-space generators on top of the kernel's:
//! the keystream of a 256-bit key is produced one buffer at a time; the first 32 bytes of
//! every buffer become the next key and are wiped, so bytes already handed out cannot be
//! recomputed from the state that remains. Every [`RESEED_INTERVAL`] bytes the key is
//! mixed (XOR) with 32 fresh bytes from the source, which is also where the first key
//! comes from. Bytes are wiped from the buffer as they are handed out.

use std::fs::File;
use std::io::{self, Read, Write};

use crate::keystream::Keystream;

/// Keystream bytes computed per refill, the next key included.
const BUFFER: usize = 16 * 1024;

/// Key bytes.
const KEY_LEN: usize = 32;

/// Bytes handed out between two reads of the entropy source.
pub const RESEED_INTERVAL: u64 = 1 << 20;

/// A ChaCha20 generator seeded (and reseeded every [`RESEED_INTERVAL`] bytes) from an
/// entropy source such as `/dev/urandom`.
///
/// # Example
/// ```
/// use std::fs::File;
/// use vhost_user_sync_rng::drbg::Drbg;
/// let mut g = Drbg::new(File::open("/dev/urandom")?)?;
/// let mut a = Vec::new();
/// g.write_to(&mut a, 100)?;
/// let mut b = Vec::new();
/// g.write_to(&mut b, 100)?;
/// assert_eq!((a.len(), b.len()), (100, 100));
/// assert_ne!(a, b);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Drbg {
    source: File,
    cipher: Keystream,
    buffer: Box<[u8; BUFFER]>,
    /// Next byte of `buffer` to hand out; `BUFFER` when it is used up.
    pos: usize,
    /// Bytes handed out since the last reseed.
    since_reseed: u64,
}

impl std::fmt::Debug for Drbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drbg")
            .field("since_reseed", &self.since_reseed)
            .finish_non_exhaustive()
    }
}

impl Drbg {
    /// A generator whose key comes from `source`; fails if 32 bytes cannot be read.
    pub fn new(mut source: File) -> io::Result<Self> {
        let mut key = [0u8; KEY_LEN];
        source.read_exact(&mut key)?;
        let cipher = Keystream::new(&key, &[0; 12], 0);
        key.fill(0);
        Ok(Drbg {
            source,
            cipher,
            buffer: Box::new([0; BUFFER]),
            pos: BUFFER,
            since_reseed: 0,
        })
    }

    /// Writes `len` random bytes into `out`; returns how many `out` took (less than
    /// `len` only when it is full). Fails only if the source cannot be read at a reseed.
    pub fn write_to(&mut self, out: &mut impl Write, len: usize) -> io::Result<usize> {
        let mut done = 0;
        while done < len {
            if self.pos == BUFFER {
                self.refill()?;
            }
            let want = (BUFFER - self.pos).min(len - done);
            let n = out.write(&self.buffer[self.pos..self.pos + want])?;
            // Handed out: never again in memory.
            self.buffer[self.pos..self.pos + n].fill(0);
            self.pos += n;
            done += n;
            self.since_reseed += n as u64;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    /// Computes the next buffer of keystream and rekeys from its first 32 bytes. When a
    /// reseed is due, the key first takes in fresh source bytes, so the new buffer
    /// already depends on them.
    fn refill(&mut self) -> io::Result<()> {
        if self.since_reseed >= RESEED_INTERVAL {
            let mut fresh = [0u8; KEY_LEN];
            self.source.read_exact(&mut fresh)?;
            let mut key = [0u8; KEY_LEN];
            self.cipher.fill(&mut key)?;
            for (k, f) in key.iter_mut().zip(&fresh) {
                *k ^= f;
            }
            self.cipher = Keystream::new(&key, &[0; 12], 0);
            key.fill(0);
            fresh.fill(0);
            self.since_reseed = 0;
        }
        self.cipher.fill(&mut self.buffer[..])?;
        let key: &[u8; KEY_LEN] = self.buffer[..KEY_LEN]
            .try_into()
            .expect("the buffer is longer than a key");
        self.cipher = Keystream::new(key, &[0; 12], 0);
        self.buffer[..KEY_LEN].fill(0);
        self.pos = KEY_LEN;
        Ok(())
    }
}

impl Drop for Drbg {
    fn drop(&mut self) {
        self.buffer.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    fn source(bytes: &[u8]) -> File {
        let mut f = tempfile_with(bytes);
        f.rewind().expect("rewind");
        f
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        let fd = nix::sys::memfd::memfd_create("seed", nix::sys::memfd::MFdFlags::empty())
            .expect("memfd");
        let mut f = File::from(fd);
        f.write_all(bytes).expect("write");
        f
    }

    /// The first bytes are the keystream of the seed key after the 32 key bytes: the
    /// generator is ChaCha20 and nothing else.
    #[test]
    fn output_is_the_keystream_after_the_next_key() {
        let seed = [9u8; 32];
        let mut g = Drbg::new(source(&seed)).expect("drbg");
        let mut out = Vec::new();
        assert_eq!(g.write_to(&mut out, 1000).expect("write"), 1000);
        let mut ks = vec![0u8; 32 + 1000];
        Keystream::new(&seed, &[0; 12], 0)
            .fill(&mut ks)
            .expect("keystream");
        assert!(out == ks[32..]);
    }

    /// A buffer's output continues where the previous call stopped, across refills, and
    /// the next buffer is keyed from the first 32 bytes of the one before.
    #[test]
    fn calls_continue_the_stream_and_rekey_per_buffer() {
        let seed = [1u8; 32];
        let mut g = Drbg::new(source(&seed)).expect("drbg");
        let mut out = Vec::new();
        for len in [1, 4095, 10_000, BUFFER, BUFFER] {
            g.write_to(&mut out, len).expect("write");
        }
        let mut first = vec![0u8; BUFFER];
        Keystream::new(&seed, &[0; 12], 0)
            .fill(&mut first)
            .expect("keystream");
        let next_key: [u8; 32] = first[..32].try_into().expect("key");
        let mut second = vec![0u8; BUFFER];
        Keystream::new(&next_key, &[0; 12], 0)
            .fill(&mut second)
            .expect("keystream");
        let per_buffer = BUFFER - KEY_LEN;
        assert!(out[..per_buffer] == first[32..]);
        assert!(out[per_buffer..2 * per_buffer] == second[32..]);
        // Nothing handed out stays in the buffer.
        assert!(g.buffer[..g.pos].iter().all(|&b| b == 0));
    }

    /// After RESEED_INTERVAL bytes the next key takes in fresh source bytes: two
    /// generators with the same first seed but different later source bytes diverge
    /// there and not before.
    #[test]
    fn reseeds_from_the_source() {
        let mut a_src = vec![5u8; 32];
        a_src.extend_from_slice(&[1u8; 32]);
        let mut b_src = vec![5u8; 32];
        b_src.extend_from_slice(&[2u8; 32]);
        let mut a = Drbg::new(source(&a_src)).expect("a");
        let mut b = Drbg::new(source(&b_src)).expect("b");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let n = RESEED_INTERVAL as usize;
        a.write_to(&mut x, n).expect("a");
        b.write_to(&mut y, n).expect("b");
        assert!(x == y);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.write_to(&mut x, BUFFER).expect("a");
        b.write_to(&mut y, BUFFER).expect("b");
        // The buffer in use at the reseed point is finished first.
        let left = BUFFER - KEY_LEN - n % (BUFFER - KEY_LEN);
        assert!(x[..left] == y[..left]);
        assert!(x[left..] != y[left..]);
    }

    #[test]
    fn a_source_that_ends_is_an_error() {
        assert!(Drbg::new(source(&[0u8; 31])).is_err());
        let mut g = Drbg::new(source(&[0u8; 32])).expect("drbg");
        let mut sink = io::sink();
        let err = g.write_to(&mut sink, 2 * RESEED_INTERVAL as usize);
        assert!(err.is_err());
    }

    #[test]
    fn a_full_sink_takes_what_fits() {
        let mut g = Drbg::new(source(&[3u8; 32])).expect("drbg");
        let mut space = [0u8; 10];
        let mut sink = &mut space[..];
        assert_eq!(g.write_to(&mut sink, 64).expect("write"), 10);
        assert_ne!(space, [0u8; 10]);
    }
}
