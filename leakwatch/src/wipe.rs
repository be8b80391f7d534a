//! Zeroing buffers that held plaintext, fast. `zeroize` 1.9 zeroes a `Vec<u8>` (or `String`)
//! one volatile byte store at a time (its `Vec` impl goes element by element); its slice
//! impl is a `memset` kept by an optimization barrier, several times faster on the KiB-sized
//! payloads, environments and decodings the daemon drops by the thousand per second.
use zeroize::Zeroize;

/// Zeroes `v`'s bytes and its spare capacity, then empties it (as `Vec::zeroize` does).
pub fn vec(v: &mut Vec<u8>) {
    v.as_mut_slice().zeroize();
    v.spare_capacity_mut().zeroize();
    v.clear();
}

/// The same for a `String`.
pub fn string(s: &mut String) {
    // SAFETY: emptied below; no byte of it is read as UTF-8 meanwhile.
    vec(unsafe { s.as_mut_vec() });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_of_the_allocation_is_zeroed() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0xa5; 64]);
        v.truncate(40);
        let p = v.as_ptr();
        vec(&mut v);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), 64);
        // SAFETY: the allocation is still `v`'s, 64 bytes, every one written above.
        let all = unsafe { std::slice::from_raw_parts(p, 64) };
        assert!(all.iter().all(|&b| b == 0), "{all:?}");
        let mut s = String::from("sk-not-a-real-key");
        let p = s.as_ptr();
        let n = s.len();
        string(&mut s);
        assert!(s.is_empty());
        // SAFETY: as above, `n` bytes of `s`'s allocation.
        assert!(unsafe { std::slice::from_raw_parts(p, n) }
            .iter()
            .all(|&b| b == 0));
    }
}
