//! Bytes on their way to a socket: one buffer of frames, with large shared payloads spliced
//! in by reference, written with vectored writes (the outbox fills it, the connection's
//! socket writes it).

use std::io::IoSlice;

use bytes::Bytes;

/// Payloads longer than this are not copied into each subscriber's queue: the queue holds a
/// reference to the trigger's one copy. Below it a copy is cheaper than the bookkeeping (and
/// keeps a burst of small frames one contiguous write); above it the copies are what a
/// node's memory goes to (1 MiB triggers to 1,000 subscribers: 1 GiB copied vs 1 MiB shared).
pub const SHARE_ABOVE: usize = 16 * 1024;

/// Bytes on their way to the socket: one buffer, with large shared payloads spliced in.
#[derive(Default)]
pub struct Wire {
    pub(crate) bytes: Vec<u8>,
    /// `(at, payload)`, in order of `at`: `payload` goes on the wire right before `bytes[at..]`.
    pub(crate) shared: Vec<(usize, Bytes)>,
    shared_len: usize,
}

impl Wire {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer, to append frames to.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// A wire of `bytes` with `shared` spliced in (`(at, payload)`, in order of `at`).
    pub(crate) fn from_parts(bytes: Vec<u8>, shared: Vec<(usize, Bytes)>) -> Wire {
        let shared_len = shared.iter().map(|(_, p)| p.len()).sum();
        Wire {
            bytes,
            shared,
            shared_len,
        }
    }

    /// The buffer, its splices and their length.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Vec<(usize, Bytes)>, usize) {
        (self.bytes, self.shared, self.shared_len)
    }

    /// After the splices were swapped in from elsewhere: their length.
    pub(crate) fn set_shared_len(&mut self, len: usize) {
        self.shared_len = len;
    }

    /// Appends `payload` by reference, after the bytes so far.
    pub fn push_shared(&mut self, payload: Bytes) {
        self.shared_len += payload.len();
        self.shared.push((self.bytes.len(), payload));
    }

    /// Removes the frames at `ranges` of the buffer (in order, not overlapping), with the
    /// shared payloads spliced inside them; the rest keeps its order.
    pub fn remove(&mut self, ranges: &[(usize, usize)]) {
        let old = std::mem::take(self);
        let mut bytes = Vec::with_capacity(old.bytes.len());
        let mut at = 0;
        for &(start, end) in ranges {
            bytes.extend_from_slice(&old.bytes[at..start]);
            at = end;
        }
        bytes.extend_from_slice(&old.bytes[at..]);
        // Shared payloads inside a removed frame go; the others move back by what was cut
        // before them.
        self.bytes = bytes;
        for (splice, payload) in old.shared {
            if ranges.iter().any(|&(s, e)| s < splice && splice < e) {
                continue;
            }
            let cut: usize = ranges
                .iter()
                .filter(|&&(_, e)| e <= splice)
                .map(|&(s, e)| e - s)
                .sum();
            self.shared_len += payload.len();
            self.shared.push((splice - cut, payload));
        }
    }

    /// Appends `other` after what is here.
    pub fn append(&mut self, other: Wire) {
        let base = self.bytes.len();
        self.shared
            .extend(other.shared.into_iter().map(|(at, p)| (base + at, p)));
        self.shared_len += other.shared_len;
        self.bytes.extend_from_slice(&other.bytes);
    }

    /// The bytes from wire position `from` on, as up to `slices.len()` slices (at least one);
    /// returns how many were filled.
    pub fn slices<'a>(&'a self, from: usize, slices: &mut [IoSlice<'a>]) -> usize {
        if self.shared.is_empty() {
            slices[0] = IoSlice::new(&self.bytes[from.min(self.bytes.len())..]);
            return 1;
        }
        let mut filled = 0;
        let mut pos = 0; // wire position of the next piece
        let mut push = |piece: &'a [u8]| {
            let end = pos + piece.len();
            if end > from && filled < slices.len() {
                slices[filled] = IoSlice::new(&piece[from.saturating_sub(pos)..]);
                filled += 1;
            }
            pos = end;
        };
        let mut at = 0; // index into `bytes` of the next piece
        for (splice, payload) in &self.shared {
            push(&self.bytes[at..*splice]);
            push(payload);
            at = *splice;
        }
        push(&self.bytes[at..]);
        filled
    }

    /// Everything as one buffer (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut slices = vec![IoSlice::new(&[]); 2 * self.shared.len() + 1];
        let n = self.slices(0, &mut slices);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }
}
