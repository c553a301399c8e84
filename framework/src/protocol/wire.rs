//! Native-endian field access over a byte slice whose length was already checked.

/// Reads fixed-size native-endian fields from a body of known length.
///
/// Callers check the body size first (see [`super::RequestShape::check_size`]); an
/// out-of-range read still cannot panic: it yields zero bytes past the end.
pub(crate) struct FieldReader<'a> {
    bytes: &'a [u8],
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        FieldReader { bytes }
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = at.checked_add(N).and_then(|end| self.bytes.get(at..end)) {
            out.copy_from_slice(src);
        }
        out
    }

    pub(crate) fn u16(&self, at: usize) -> u16 {
        u16::from_ne_bytes(self.array(at))
    }

    pub(crate) fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.array(at))
    }

    pub(crate) fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.array(at))
    }
}

/// Appends native-endian fields.
#[derive(Default)]
pub(crate) struct FieldWriter {
    pub(crate) bytes: Vec<u8>,
}

impl FieldWriter {
    pub(crate) fn u16(mut self, v: u16) -> Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub(crate) fn raw(mut self, v: &[u8]) -> Self {
        self.bytes.extend_from_slice(v);
        self
    }
}
