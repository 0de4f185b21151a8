//! Process-level calls: argv, environment, randomness, signals, sockets.
//!
//! `proc_exit` itself lives in the linker (it unwinds the guest instead of
//! returning an errno). Signals and sockets are not supported, with the
//! errnos wasmtime-wasi gives: `proc_raise` is `ENOTSUP`; `sock_*` check the
//! fd (`EBADF`) and then answer `ENOTSOCK`, since no preview1 descriptor can
//! be a socket here.

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::WasiCtx;

/// Write NUL-terminated strings and a pointer to each, argv-style. All
/// bounds are checked before anything is written.
fn write_string_array(
    mem: &mut GuestMemory<'_>,
    ptrs: u32,
    buf: u32,
    strings: impl Iterator<Item = Vec<u8>> + Clone,
) -> WasiResult {
    let count = u32::try_from(strings.clone().count())?;
    let total: usize = strings.clone().map(|s| s.len() + 1).sum();
    mem.check(ptrs, count.checked_mul(4).ok_or(Errno::FAULT)?)?;
    mem.check(buf, u32::try_from(total).map_err(|_| Errno::FAULT)?)?;
    let (mut ptr_at, mut buf_at) = (ptrs, buf);
    for mut s in strings {
        mem.write_u32(ptr_at, buf_at)?;
        s.push(0);
        mem.write(buf_at, &s)?;
        // Both ranges were checked; past the last entry they may reach 2^32.
        ptr_at = ptr_at.wrapping_add(4);
        buf_at = buf_at.wrapping_add(s.len() as u32);
    }
    Ok(())
}

fn write_sizes(
    mem: &mut GuestMemory<'_>,
    count_out: u32,
    size_out: u32,
    count: usize,
    size: usize,
) -> WasiResult {
    let count = u32::try_from(count)?;
    let size = u32::try_from(size)?;
    mem.check(count_out, 4)?;
    mem.check(size_out, 4)?;
    mem.write_u32(count_out, count)?;
    mem.write_u32(size_out, size)
}

impl WasiCtx {
    fn env_strings(&self) -> impl Iterator<Item = Vec<u8>> + Clone + '_ {
        self.env
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
    }

    pub(crate) fn args_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        argv: u32,
        buf: u32,
    ) -> WasiResult {
        let args = self.args.iter().map(|a| a.clone().into_bytes());
        write_string_array(mem, argv, buf, args)
    }

    pub(crate) fn args_sizes_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        count: u32,
        size: u32,
    ) -> WasiResult {
        let total = self.args.iter().map(|a| a.len() + 1).sum();
        write_sizes(mem, count, size, self.args.len(), total)
    }

    pub(crate) fn environ_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        environ: u32,
        buf: u32,
    ) -> WasiResult {
        write_string_array(mem, environ, buf, self.env_strings())
    }

    pub(crate) fn environ_sizes_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        count: u32,
        size: u32,
    ) -> WasiResult {
        let total = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        write_sizes(mem, count, size, self.env.len(), total)
    }

    pub(crate) fn random_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        buf: u32,
        len: u32,
    ) -> WasiResult {
        let dest = mem.slice_mut(buf, len)?;
        getrandom::fill(dest).map_err(|e| {
            tracing::warn!(error = %e, "host random source failed");
            Errno::IO
        })
    }

    pub(crate) fn proc_raise(&mut self, _sig: u32) -> WasiResult {
        Err(Errno::NOTSUP)
    }

    pub(crate) fn sched_yield(&mut self) -> WasiResult {
        // Like wasmtime-wasi: nothing to do (preview2 has no such call).
        Ok(())
    }

    /// Shared body of the four `sock_*` calls.
    pub(crate) fn sock_unsupported(&mut self, fd: u32) -> WasiResult {
        self.table.get(fd)?;
        Err(Errno::NOTSOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_arrays_are_checked_before_writing() {
        let mut bytes = vec![0u8; 32];
        let mut mem = GuestMemory::new(&mut bytes);
        let strings = ["ab", "c"].iter().map(|s| s.as_bytes().to_vec());
        write_string_array(&mut mem, 0, 8, strings.clone()).unwrap();
        assert_eq!(&bytes[8..13], b"ab\0c\0");
        assert_eq!(
            u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            11
        );

        let mut bytes = vec![0u8; 12];
        let mut mem = GuestMemory::new(&mut bytes);
        assert_eq!(
            write_string_array(&mut mem, 0, 8, strings),
            Err(Errno::FAULT)
        );
        assert_eq!(bytes, vec![0u8; 12], "nothing written on EFAULT");
    }
}
