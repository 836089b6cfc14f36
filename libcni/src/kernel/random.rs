//! Bytes from the kernel's random source, for names nobody can predict (veth names, MACs,
//! temporary files).

use std::io;

pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), N - filled, 0) };
        match n {
            n if n > 0 => filled += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

/// `N` random bytes as `2 * N` lowercase hex digits.
pub fn hex<const N: usize>() -> io::Result<String> {
    Ok(crate::hash::hex(&bytes::<N>()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_has_the_length_and_varies() {
        let (a, b) = (super::hex::<8>().unwrap(), super::hex::<8>().unwrap());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
