//! Zeroing buffers that held plaintext, fast. `zeroize` 1.9 zeroes a `Vec<u8>` one volatile
//! byte store at a time (its `Vec` impl goes element by element; perf put that loop at a
//! fifth of the daemon's CPU under a 4 KiB TLS write loop); its slice impl is a `memset`
//! kept by an optimization barrier. Payloads, environments and decodings are dropped by
//! the thousand per second.
use zeroize::Zeroize;

/// Zeroes `v`'s bytes and its spare capacity, then empties it (as `Vec::zeroize` does).
pub fn vec(v: &mut Vec<u8>) {
    v.as_mut_slice().zeroize();
    v.spare_capacity_mut().zeroize();
    v.clear();
}

/// Appends `bytes` to `v`. When `v` must grow, its bytes move to a new allocation here and
/// the old one is zeroed: `Vec`'s own growth reallocates and leaves them in freed memory.
/// Grows at least twofold, as `Vec` does.
pub fn extend(v: &mut Vec<u8>, bytes: &[u8]) {
    let need = v.len() + bytes.len();
    if need > v.capacity() {
        let mut bigger = Vec::with_capacity(need.max(v.capacity() * 2));
        bigger.extend_from_slice(v);
        vec(v);
        *v = bigger;
    }
    v.extend_from_slice(bytes);
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
    }

    #[test]
    fn extend_keeps_the_bytes_and_grows_at_least_twofold() {
        let mut v = Vec::with_capacity(4);
        let mut want = Vec::new();
        for i in 0..100u8 {
            let piece = vec![i; (i % 7) as usize];
            let cap = v.capacity();
            extend(&mut v, &piece);
            want.extend_from_slice(&piece);
            assert_eq!(v, want);
            if v.capacity() != cap {
                assert!(
                    v.capacity() >= (2 * cap).max(want.len()),
                    "{cap} -> {}",
                    v.capacity()
                );
            }
        }
    }
}
