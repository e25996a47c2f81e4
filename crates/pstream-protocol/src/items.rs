//! A batch's items: one contiguous buffer and the end offset of each item.

use std::fmt;

/// Opaque item blobs stored back to back in one buffer.
///
/// Building a batch appends to one `Vec<u8>` (no allocation per item); a decoded frame
/// keeps its receive buffer and only records where the items start, so item bytes are
/// never copied on the way in.
#[derive(Clone, Default)]
pub struct Items {
    /// Holds the items' bytes from `data_start` on. Before it: whatever else the
    /// buffer held when it was received (the frame header); never looked at.
    buf: Vec<u8>,
    /// Where the first item starts in `buf`.
    data_start: usize,
    /// Cumulative end offset of each item, relative to `data_start`.
    ends: Vec<u32>,
    /// Items received packed (see [`crate::ResultsHeader::packed`]): how many there
    /// are. Their bytes run together, and only decoding them finds where each
    /// ends; `ends` is empty.
    packed: Option<usize>,
}

impl Items {
    /// No items.
    pub fn new() -> Items {
        Items::default()
    }

    /// No items, with room for `items` items of `bytes` bytes in all.
    pub fn with_capacity(items: usize, bytes: usize) -> Items {
        Items {
            buf: Vec::with_capacity(bytes),
            data_start: 0,
            ends: Vec::with_capacity(items),
            packed: None,
        }
    }

    /// Items whose bytes are `buf[data_start..]`, cut at `ends`. The caller has checked
    /// that `ends` ascend and that the last one is `buf.len() - data_start`.
    pub(crate) fn from_parts(buf: Vec<u8>, data_start: usize, ends: Vec<u32>) -> Items {
        debug_assert!(ends.windows(2).all(|w| w[0] <= w[1]));
        debug_assert_eq!(
            ends.last().map_or(0, |&e| e as usize),
            buf.len() - data_start
        );
        Items {
            buf,
            data_start,
            ends,
            packed: None,
        }
    }

    /// `count` packed items whose bytes are `buf[data_start..]`.
    pub(crate) fn packed_from_parts(buf: Vec<u8>, data_start: usize, count: usize) -> Items {
        Items {
            buf,
            data_start,
            ends: Vec::new(),
            packed: Some(count),
        }
    }

    /// Whether the items were received packed: [`Items::get`] and [`Items::iter`]
    /// cannot split them; whoever knows their type decodes them one after another
    /// from [`Items::data`].
    #[inline]
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// How many items.
    #[inline]
    pub fn len(&self) -> usize {
        match self.packed {
            Some(count) => count,
            None => self.ends.len(),
        }
    }

    /// Whether there are no items.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items' bytes, all together.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.data_start..]
    }

    /// The items' bytes from `at` on (empty past their end): one bounds check,
    /// where `data().get(at..)` made two.
    #[inline]
    pub fn data_from(&self, at: usize) -> &[u8] {
        self.buf.get(self.data_start + at..).unwrap_or_default()
    }

    /// The total size of the items' bytes.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.buf.len() - self.data_start
    }

    /// The cumulative end offsets.
    #[inline]
    pub fn ends(&self) -> &[u32] {
        &self.ends
    }

    /// The `i`th item's bytes, or `None` past the end (and for packed items).
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.buf[self.data_start + start..self.data_start + end])
    }

    /// The items in order (none, for packed items).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        let data = self.data();
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let item = &data[start..end as usize];
            start = end as usize;
            item
        })
    }

    /// Append one item.
    #[inline]
    pub fn push(&mut self, item: &[u8]) {
        self.buf.extend_from_slice(item);
        self.close_item();
    }

    /// Append one item written by `write` straight into the buffer (no copy, no
    /// allocation per item). If `write` fails, whatever it wrote is removed and
    /// nothing is appended.
    #[inline]
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mark = self.buf.len();
        match write(&mut self.buf) {
            Ok(()) => {
                self.close_item();
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(mark);
                Err(e)
            }
        }
    }

    /// Append an empty slot (a failed item's place in a results frame).
    pub fn push_empty(&mut self) {
        self.close_item();
    }

    /// Drop bytes written after the last item: what a `push_with` whose writer
    /// panicked left behind.
    pub fn truncate_partial(&mut self) {
        let end = self.ends.last().map_or(0, |&e| e as usize);
        self.buf.truncate(self.data_start + end);
    }

    /// Remove the last item, if any.
    pub fn pop(&mut self) {
        if self.ends.pop().is_some() {
            let end = self.ends.last().map_or(0, |&e| e as usize);
            self.buf.truncate(self.data_start + end);
        }
    }

    /// The items `range` as a new batch (copies their bytes).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Items {
        let mut out = Items::with_capacity(range.len(), 0);
        for i in range {
            out.push(self.get(i).expect("range within items"));
        }
        out
    }

    /// The buffer that held the items (and whatever preceded them), for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Forget every item, keeping the allocations.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.data_start = 0;
        self.ends.clear();
        self.packed = None;
    }

    #[inline]
    fn close_item(&mut self) {
        let end = self.buf.len() - self.data_start;
        // Frames are limited far below 4 GiB, and builders cut batches by size first.
        self.ends
            .push(u32::try_from(end).expect("a batch's items exceed 4 GiB"));
    }
}

impl PartialEq for Items {
    fn eq(&self, other: &Items) -> bool {
        self.ends == other.ends && self.packed == other.packed && self.data() == other.data()
    }
}

impl Eq for Items {}

impl fmt::Debug for Items {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Items")
            .field("len", &self.len())
            .field("bytes", &self.data_len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_from_is_the_items_bytes_from_an_offset_and_empty_past_their_end() {
        // Items behind a header of three bytes, as a received frame holds them.
        let packed = Items::packed_from_parts(vec![9, 9, 9, 1, 2, 3, 4], 3, 2);
        assert_eq!(packed.data_from(0), &[1, 2, 3, 4]);
        assert_eq!(packed.data_from(3), &[4]);
        assert_eq!(packed.data_from(4), &[] as &[u8]);
        assert_eq!(packed.data_from(5), &[] as &[u8]);
        let mut built = Items::new();
        built.push(b"ab");
        built.push(b"c");
        assert_eq!(built.data_from(1), b"bc");
    }

    #[test]
    fn push_get_iter() {
        let mut items = Items::new();
        items.push(b"abc");
        items.push_empty();
        items
            .push_with(|b| {
                b.extend_from_slice(b"de");
                Ok::<_, ()>(())
            })
            .unwrap();
        assert!(items
            .push_with(|b| {
                b.extend_from_slice(b"zzz");
                Err(())
            })
            .is_err());
        assert_eq!(items.len(), 3);
        assert_eq!(items.get(0), Some(&b"abc"[..]));
        assert_eq!(items.get(1), Some(&b""[..]));
        assert_eq!(items.get(2), Some(&b"de"[..]));
        assert_eq!(items.get(3), None);
        let all: Vec<&[u8]> = items.iter().collect();
        assert_eq!(all, vec![&b"abc"[..], b"", b"de"]);
        assert_eq!(
            items.slice(1..3).iter().collect::<Vec<_>>(),
            vec![&b""[..], b"de"]
        );
        items.pop();
        assert_eq!(items.len(), 2);
        assert_eq!(items.data(), b"abc");
    }
}
