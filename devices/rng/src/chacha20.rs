//! `ChaCha20`: the keystream of the ChaCha20 stream cipher (RFC 8439), computed several
//! blocks at a time so that the compiler can keep one block per vector lane.
//!
//! Only the keystream is needed here (the generator in [`crate::drbg`] hands it out as
//! random bytes); there is no encryption API.

/// Bytes in one ChaCha20 block.
pub const BLOCK_LEN: usize = 64;

/// Blocks computed together by the portable path (one per lane of a 128-bit vector).
const LANES: usize = 4;

/// Blocks computed together where AVX2 is available (one per lane of a 256-bit vector).
#[cfg(target_arch = "x86_64")]
const WIDE_LANES: usize = 8;

/// "expand 32-byte k".
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// A ChaCha20 keystream: 256-bit key, 96-bit nonce, 32-bit block counter.
///
/// # Example
/// ```
/// use vhost_user_sync_rng::chacha20::ChaCha20;
/// let mut a = ChaCha20::new(&[7; 32], &[0; 12], 0);
/// let mut b = ChaCha20::new(&[7; 32], &[0; 12], 0);
/// let (mut x, mut y) = ([0u8; 100], [0u8; 100]);
/// a.fill(&mut x);
/// b.fill(&mut y[..40]);
/// b.fill(&mut y[40..]);
/// assert_ne!(x, [0u8; 100]);
/// // Every call starts at a block boundary: what is left of a block is skipped.
/// assert_eq!(x[..40], y[..40]);
/// assert_eq!(y[40..64], x[64..88]);
/// ```
#[derive(Clone)]
pub struct ChaCha20 {
    /// Words 0..16 of the input block; word 12 is the counter of the next block.
    input: [u32; 16],
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl std::fmt::Debug for ChaCha20 {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaCha20")
            .field("counter", &self.input[12])
            .finish_non_exhaustive()
    }
}

impl ChaCha20 {
    /// The keystream of `key` and `nonce`, starting at block `counter`.
    pub fn new(key: &[u8; 32], nonce: &[u8; 12], counter: u32) -> Self {
        let mut input = [0u32; 16];
        input[..4].copy_from_slice(&CONSTANTS);
        for (w, c) in input[4..12].iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        input[12] = counter;
        for (w, c) in input[13..].iter_mut().zip(nonce.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        ChaCha20 {
            input,
            #[cfg(target_arch = "x86_64")]
            avx2: std::is_x86_feature_detected!("avx2"),
        }
    }

    /// The counter of the next block.
    pub fn counter(&self) -> u32 {
        self.input[12]
    }

    /// Fills `out` with the next `out.len().div_ceil(64)` blocks of keystream (the rest
    /// of the last block is dropped). The 32-bit block counter wraps after 256 GiB; users
    /// rekey long before.
    pub fn fill(&mut self, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        let out = if self.avx2 {
            let mut chunks = out.chunks_exact_mut(WIDE_LANES * BLOCK_LEN);
            for chunk in &mut chunks {
                // SAFETY: `avx2` is set only when the CPU reports AVX2
                // (`is_x86_feature_detected!` in `new`), which is all that
                // `blocks_avx2` requires beyond the checked chunk length.
                unsafe { blocks_avx2(&mut self.input, chunk) };
            }
            chunks.into_remainder()
        } else {
            out
        };
        self.fill_tail(out);
    }

    /// The portable path: four blocks at a time, then a partial group.
    fn fill_tail(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(LANES * BLOCK_LEN);
        for chunk in &mut chunks {
            blocks::<LANES>(&mut self.input, chunk);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut group = [0u8; LANES * BLOCK_LEN];
            let used = rest.len().div_ceil(BLOCK_LEN);
            let before = self.input[12];
            blocks::<LANES>(&mut self.input, &mut group);
            rest.copy_from_slice(&group[..rest.len()]);
            // Blocks computed but not handed out are not skipped over.
            self.input[12] = before.wrapping_add(used as u32);
            group.fill(0);
        }
    }
}

/// [`blocks`] for eight lanes, compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blocks_avx2(input: &mut [u32; 16], out: &mut [u8]) {
    blocks::<WIDE_LANES>(input, out);
}

/// Computes `N` consecutive blocks from `input` into `out` (exactly `N * 64` bytes) and
/// advances the counter by `N`. Word `w` of every block sits in `x[w]`, one block per
/// lane, so each step of a round is the same operation on `N` lanes.
#[inline(always)]
fn blocks<const N: usize>(input: &mut [u32; 16], out: &mut [u8]) {
    debug_assert_eq!(out.len(), N * BLOCK_LEN);
    let mut start = [[0u32; N]; 16];
    for (w, lanes) in start.iter_mut().enumerate() {
        *lanes = [input[w]; N];
    }
    for (lane, c) in start[12].iter_mut().enumerate() {
        *c = input[12].wrapping_add(lane as u32);
    }
    let mut x = start;
    for _ in 0..10 {
        quarter_round(&mut x, 0, 4, 8, 12);
        quarter_round(&mut x, 1, 5, 9, 13);
        quarter_round(&mut x, 2, 6, 10, 14);
        quarter_round(&mut x, 3, 7, 11, 15);
        quarter_round(&mut x, 0, 5, 10, 15);
        quarter_round(&mut x, 1, 6, 11, 12);
        quarter_round(&mut x, 2, 7, 8, 13);
        quarter_round(&mut x, 3, 4, 9, 14);
    }
    for (w, lanes) in x.iter_mut().enumerate() {
        for (v, s) in lanes.iter_mut().zip(start[w]) {
            *v = v.wrapping_add(s);
        }
    }
    for (lane, block) in out.chunks_exact_mut(BLOCK_LEN).enumerate() {
        for (w, bytes) in block.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&x[w][lane].to_le_bytes());
        }
    }
    input[12] = input[12].wrapping_add(N as u32);
}

#[inline(always)]
fn quarter_round<const N: usize>(x: &mut [[u32; N]; 16], a: usize, b: usize, c: usize, d: usize) {
    step(x, a, b, d, 16);
    step(x, c, d, b, 12);
    step(x, a, b, d, 8);
    step(x, c, d, b, 7);
}

/// `x[a] += x[b]; x[d] ^= x[a]; x[d] <<<= r`, lane by lane.
#[inline(always)]
fn step<const N: usize>(x: &mut [[u32; N]; 16], a: usize, b: usize, d: usize, r: u32) {
    let (mut va, vb, mut vd) = (x[a], x[b], x[d]);
    for ((a, b), d) in va.iter_mut().zip(vb).zip(vd.iter_mut()) {
        *a = a.wrapping_add(b);
        *d = (*d ^ *a).rotate_left(r);
    }
    x[a] = va;
    x[d] = vd;
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
        let mut c = ChaCha20::new(&key_0_to_31(), &nonce, 1);
        let mut out = [0u8; 64];
        c.fill(&mut out);
        let want = hex("10 f1 e7 e4 d1 3b 59 15 50 0f dd 1f a3 20 71 c4
             c7 d1 f4 c7 33 c0 68 03 04 22 aa 9a c3 d4 6c 4e
             d2 82 64 46 07 9f aa 09 14 c2 d7 05 d9 8b 02 a2
             b5 12 9c d1 de 16 4e b9 cb d0 83 e8 a2 50 3c 4e");
        assert_eq!(out.to_vec(), want);
        assert_eq!(c.counter(), 2);
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
        ChaCha20::new(&key_0_to_31(), &nonce, 1).fill(&mut ks);
        let enc: Vec<u8> = plain.iter().zip(&ks).map(|(p, k)| p ^ k).collect();
        assert_eq!(enc, cipher);
    }

    /// Every path (eight lanes, four lanes, a partial group) gives the same stream as
    /// one block at a time.
    #[test]
    fn wide_and_narrow_paths_agree() {
        let key = [0x5a; 32];
        let nonce = [3; 12];
        let mut one_at_a_time = Vec::new();
        let mut c = ChaCha20::new(&key, &nonce, 0xffff_fff0);
        for _ in 0..40 {
            let mut b = [0u8; 64];
            c.fill(&mut b);
            one_at_a_time.extend_from_slice(&b);
        }
        for len in [64 * 40, 64 * 8 + 64 * 4 + 64 * 3, 64 * 12, 64 * 9 + 1] {
            let mut out = vec![0u8; len];
            ChaCha20::new(&key, &nonce, 0xffff_fff0).fill(&mut out);
            assert_eq!(out, one_at_a_time[..len], "{len} bytes");
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut portable = ChaCha20::new(&key, &nonce, 0xffff_fff0);
            portable.avx2 = false;
            let mut out = vec![0u8; 64 * 40];
            portable.fill(&mut out);
            assert_eq!(out, one_at_a_time);
        }
    }

    #[test]
    fn counter_moves_by_blocks_handed_out() {
        let mut c = ChaCha20::new(&[1; 32], &[2; 12], 5);
        c.fill(&mut [0u8; 65]);
        assert_eq!(c.counter(), 7);
        c.fill(&mut [0u8; 64 * 8]);
        assert_eq!(c.counter(), 15);
        c.fill(&mut []);
        assert_eq!(c.counter(), 15);
    }
}
