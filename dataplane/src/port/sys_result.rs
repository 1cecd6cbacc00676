//! Turning the return value of a raw syscall into an `io::Result`, shared by the
//! backends' `sys` modules (TUN, UDP). Safe code only: the calls themselves and their
//! `// SAFETY:` comments stay in each backend's `sys` module. Call these right after
//! the syscall, so `errno` is still the one it set.

use std::io;

/// A call that returns 0 or -1 with `errno`.
#[inline]
pub(crate) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A non-blocking transfer that returns a byte count or -1 with `errno`: `Ok(None)`
/// when it would block (nothing waits, or the queue is full).
#[inline]
pub(crate) fn nonblocking(n: isize) -> io::Result<Option<usize>> {
    match usize::try_from(n) {
        Ok(n) => Ok(Some(n)),
        Err(_) => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}
