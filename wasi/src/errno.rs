//! WASI preview1 error numbers and the mapping from host IO errors to them.
//!
//! The mapping copies wasmtime-wasi's (`filesystem.rs`, `from_raw_os_error`)
//! exactly: a guest must see the same errno here as under `wasmtime run`, so
//! raw OS errors it does not list fall back to the `io::ErrorKind` rules and
//! usually end up as `EIO`, just as they do there.

use std::fmt;
use std::io;

/// A WASI preview1 `errno` value as returned to the guest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u16);

impl Errno {
    pub const SUCCESS: Errno = Errno(0);
    pub const ACCES: Errno = Errno(2);
    pub const AGAIN: Errno = Errno(6);
    pub const ALREADY: Errno = Errno(7);
    pub const BADF: Errno = Errno(8);
    pub const BUSY: Errno = Errno(10);
    pub const EXIST: Errno = Errno(20);
    pub const FAULT: Errno = Errno(21);
    pub const FBIG: Errno = Errno(22);
    pub const ILSEQ: Errno = Errno(25);
    pub const INPROGRESS: Errno = Errno(26);
    pub const INTR: Errno = Errno(27);
    pub const INVAL: Errno = Errno(28);
    pub const IO: Errno = Errno(29);
    pub const ISDIR: Errno = Errno(31);
    pub const LOOP: Errno = Errno(32);
    pub const MLINK: Errno = Errno(34);
    pub const NAMETOOLONG: Errno = Errno(37);
    pub const NOENT: Errno = Errno(44);
    pub const NOMEM: Errno = Errno(48);
    pub const NOSPC: Errno = Errno(51);
    pub const NOSYS: Errno = Errno(52);
    pub const NOTDIR: Errno = Errno(54);
    pub const NOTEMPTY: Errno = Errno(55);
    pub const NOTSOCK: Errno = Errno(57);
    pub const NOTSUP: Errno = Errno(58);
    pub const OVERFLOW: Errno = Errno(61);
    pub const PERM: Errno = Errno(63);
    pub const PIPE: Errno = Errno(64);
    pub const SPIPE: Errno = Errno(70);
    pub const NOTCAPABLE: Errno = Errno(76);

    /// The short name of the errno (`"ENOENT"`), for logs and messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "ESUCCESS",
            2 => "EACCES",
            6 => "EAGAIN",
            7 => "EALREADY",
            8 => "EBADF",
            10 => "EBUSY",
            20 => "EEXIST",
            21 => "EFAULT",
            22 => "EFBIG",
            25 => "EILSEQ",
            26 => "EINPROGRESS",
            27 => "EINTR",
            28 => "EINVAL",
            29 => "EIO",
            31 => "EISDIR",
            32 => "ELOOP",
            34 => "EMLINK",
            37 => "ENAMETOOLONG",
            44 => "ENOENT",
            48 => "ENOMEM",
            51 => "ENOSPC",
            52 => "ENOSYS",
            54 => "ENOTDIR",
            55 => "ENOTEMPTY",
            57 => "ENOTSOCK",
            58 => "ENOTSUP",
            61 => "EOVERFLOW",
            63 => "EPERM",
            64 => "EPIPE",
            70 => "ESPIPE",
            76 => "ENOTCAPABLE",
            _ => "E?",
        }
    }

    /// Map a host IO error the way wasmtime-wasi does.
    pub fn from_io(err: &io::Error) -> Errno {
        if let Some(errno) = err.raw_os_error().and_then(from_raw_os_error) {
            return errno;
        }
        match err.kind() {
            io::ErrorKind::NotFound => Errno::NOENT,
            io::ErrorKind::PermissionDenied => Errno::PERM,
            io::ErrorKind::AlreadyExists => Errno::EXIST,
            io::ErrorKind::InvalidInput => Errno::INVAL,
            _ => Errno::IO,
        }
    }
}

/// The raw OS errors wasmtime-wasi translates one to one; `None` for the rest.
fn from_raw_os_error(raw: i32) -> Option<Errno> {
    Some(match raw {
        libc::EPIPE => Errno::PIPE,
        libc::EPERM => Errno::PERM,
        libc::ENOENT => Errno::NOENT,
        libc::ENOMEM => Errno::NOMEM,
        libc::EIO => Errno::IO,
        libc::EBADF => Errno::BADF,
        libc::EBUSY => Errno::BUSY,
        libc::EACCES => Errno::ACCES,
        libc::ENOTDIR => Errno::NOTDIR,
        libc::EISDIR => Errno::ISDIR,
        libc::EINVAL => Errno::INVAL,
        libc::EEXIST => Errno::EXIST,
        libc::EFBIG => Errno::FBIG,
        libc::ENOSPC => Errno::NOSPC,
        libc::ESPIPE => Errno::SPIPE,
        libc::EMLINK => Errno::MLINK,
        libc::ENAMETOOLONG => Errno::NAMETOOLONG,
        libc::ENOTEMPTY => Errno::NOTEMPTY,
        libc::ELOOP => Errno::LOOP,
        libc::EOVERFLOW => Errno::OVERFLOW,
        libc::EILSEQ => Errno::ILSEQ,
        libc::EALREADY => Errno::ALREADY,
        libc::EINPROGRESS => Errno::INPROGRESS,
        libc::EINTR => Errno::INTR,
        // EOPNOTSUPP equals ENOTSUP on Linux and differs elsewhere.
        e if e == libc::ENOTSUP || e == libc::EOPNOTSUPP => Errno::NOTSUP,
        _ => return None,
    })
}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Errno {
        Errno::from_io(&err)
    }
}

impl From<std::num::TryFromIntError> for Errno {
    fn from(_: std::num::TryFromIntError) -> Errno {
        Errno::OVERFLOW
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WASI errno {} ({})", self.name(), self.0)
    }
}

impl std::error::Error for Errno {}

/// Result of a WASI call body: the errno is what the guest receives.
pub(crate) type WasiResult<T = ()> = Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_errors_map_like_wasmtime() {
        let e = |raw| Errno::from_io(&io::Error::from_raw_os_error(raw));
        assert_eq!(e(libc::ENOENT), Errno::NOENT);
        assert_eq!(e(libc::EEXIST), Errno::EXIST);
        assert_eq!(e(libc::EACCES), Errno::ACCES);
        assert_eq!(e(libc::ENOTEMPTY), Errno::NOTEMPTY);
        // Not in wasmtime's list: falls back to the kind, which is EIO here.
        assert_eq!(e(libc::EROFS), Errno::IO);
        assert_eq!(e(libc::EXDEV), Errno::IO);
    }

    #[test]
    fn kinds_without_raw_errors_map_like_wasmtime() {
        let k = |kind| Errno::from_io(&io::Error::new(kind, "x"));
        assert_eq!(k(io::ErrorKind::PermissionDenied), Errno::PERM);
        assert_eq!(k(io::ErrorKind::NotFound), Errno::NOENT);
        assert_eq!(k(io::ErrorKind::Other), Errno::IO);
    }

    #[test]
    fn names_are_readable() {
        assert_eq!(format!("{:?}", Errno::NOENT), "ENOENT(44)");
        assert_eq!(Errno::NOTCAPABLE.name(), "ENOTCAPABLE");
    }
}
