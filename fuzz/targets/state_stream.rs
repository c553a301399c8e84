//! Fuzz target: the envelope a device state travels in (`backend::state_stream`).
//!
//! The input is taken two ways. As a stream received from a frontend: `decode` never
//! panics, an accepted stream's sections lie inside it and add up to it, and encoding its
//! parts again decodes to the same parts. And as the parts of a state to send (a device
//! part and worker parts, lengths taken from the input): what `encode_parts` makes
//! decodes to them, and every cut of it is refused.

use vhost_user_sync::backend::state_stream::{decode, encode_parts, OVERHEAD};

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    received(data);
    sent(data);
}

fn received(data: &[u8]) {
    let Ok(parts) = decode(data) else {
        return;
    };
    let sections = 1 + parts.workers.len();
    let carried: usize = parts.device.len() + parts.workers.iter().map(|w| w.len()).sum::<usize>();
    // Envelope, a length per section (version 2) and the bytes: nothing left over.
    assert!(
        carried + OVERHEAD <= data.len(),
        "sections beyond the stream"
    );
    let version = u16::from_le_bytes([data[4], data[5]]);
    if version == 2 {
        assert_eq!(carried + 4 * sections + OVERHEAD, data.len());
    } else {
        assert_eq!(carried + OVERHEAD, data.len());
    }
    let workers: Vec<Vec<u8>> = parts.workers.iter().map(|w| w.to_vec()).collect();
    let again = encode_parts(parts.device, &workers);
    let back = decode(&again).expect("a state encoded again decodes");
    assert_eq!(back.device, parts.device);
    if workers.iter().any(|w| !w.is_empty()) {
        assert_eq!(back.workers, parts.workers);
    } else {
        assert!(
            back.workers.is_empty(),
            "empty worker parts add no sections"
        );
    }
}

fn sent(data: &[u8]) {
    // [workers: u8][device length: u8][worker lengths: u8 each], then the bytes.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let workers = usize::from(n % 8);
    let Some((lens, mut bytes)) = rest.split_at_checked(1 + workers) else {
        return;
    };
    let mut take = |len: u8| {
        let (part, tail) = bytes.split_at(usize::from(len).min(bytes.len()));
        bytes = tail;
        part.to_vec()
    };
    let device = take(lens[0]);
    let worker_parts: Vec<Vec<u8>> = lens[1..].iter().map(|&l| take(l)).collect();
    let stream = encode_parts(&device, &worker_parts);
    let parts = decode(&stream).expect("what encode_parts makes decodes");
    assert_eq!(parts.device, &device[..]);
    if worker_parts.iter().any(|w| !w.is_empty()) {
        assert_eq!(parts.workers.len(), worker_parts.len());
        for (got, want) in parts.workers.iter().zip(&worker_parts) {
            assert_eq!(got, want);
        }
    } else {
        assert!(parts.workers.is_empty());
    }
    for cut in [0, 1, 11, 12, stream.len() / 2, stream.len() - 1] {
        assert!(
            decode(&stream[..cut.min(stream.len() - 1)]).is_err(),
            "cut at {cut}"
        );
    }
}
