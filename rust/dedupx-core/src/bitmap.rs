//! A growable bitmap stored as little-endian u64 words: LSB-first, the same bit order as an
//! Arrow validity or boolean buffer, so the binding can hand the words over without copying.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BitVec {
    words: Vec<u64>,
    len: usize,
}

impl BitVec {
    pub fn with_capacity(bits: usize) -> Self {
        Self {
            words: Vec::with_capacity(bits.div_ceil(64)),
            len: 0,
        }
    }

    /// `len` bits, all clear.
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Sets bit `i` to `bit` and returns what it was.
    pub fn replace(&mut self, i: usize, bit: bool) -> bool {
        assert!(i < self.len, "bit {i} of {}", self.len);
        let (w, mask) = (i / 64, 1u64 << (i % 64));
        let was = self.words[w] & mask != 0;
        if bit {
            self.words[w] |= mask;
        } else {
            self.words[w] &= !mask;
        }
        was
    }

    pub fn push(&mut self, bit: bool) {
        if self.len % 64 == 0 {
            self.words.push(0);
        }
        if bit {
            let last = self.words.len() - 1;
            self.words[last] |= 1 << (self.len % 64);
        }
        self.len += 1;
    }

    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit {i} of {}", self.len);
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The words (bits past `len` are zero) and the length in bits.
    pub fn into_words(self) -> (Vec<u64>, usize) {
        (self.words, self.len)
    }
}

impl FromIterator<bool> for BitVec {
    fn from_iter<I: IntoIterator<Item = bool>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut b = BitVec::with_capacity(iter.size_hint().0);
        for bit in iter {
            b.push(bit);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_land_lsb_first() {
        let b: BitVec = (0..130).map(|i| i % 3 == 0).collect();
        assert_eq!(b.len(), 130);
        assert!(b.get(0) && !b.get(1) && b.get(3) && b.get(129) && !b.get(128));
        assert_eq!(b.count_ones(), 44);
        let (words, len) = b.into_words();
        assert_eq!(len, 130);
        assert_eq!(words.len(), 3);
        assert_eq!(words[0] & 0b1111, 0b1001);
        assert_eq!(words[2], 0b10);
    }

    #[test]
    fn replace_reports_the_old_bit() {
        let mut b = BitVec::zeros(70);
        assert!(!b.replace(65, true));
        assert!(b.replace(65, true));
        assert!(b.get(65) && !b.get(64));
        assert_eq!(b.count_ones(), 1);
    }
}
