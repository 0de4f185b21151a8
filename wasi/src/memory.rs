//! Bounds-checked access to the guest's linear memory.
//!
//! Every pointer a guest passes is untrusted: each access here checks
//! `ptr + len` against the memory's current size and answers `EFAULT` when
//! it does not fit, so no guest value can make the host panic or touch memory
//! outside the guest's own. Values are little-endian and may be unaligned
//! (wasm memory has no alignment requirement). Structs are written field by
//! field, leaving padding bytes untouched exactly as wasmtime-wasi does.

use std::ops::Range;

use crate::errno::{Errno, WasiResult};

/// The guest's linear memory for the duration of one WASI call.
pub(crate) struct GuestMemory<'a> {
    bytes: &'a mut [u8],
}

/// One `iovec` / `ciovec`: a guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoVec {
    pub ptr: u32,
    pub len: u32,
}

impl<'a> GuestMemory<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Self {
        GuestMemory { bytes }
    }

    fn range(&self, ptr: u32, len: u32) -> WasiResult<Range<usize>> {
        let start = usize::try_from(ptr).map_err(|_| Errno::FAULT)?;
        let len = usize::try_from(len).map_err(|_| Errno::FAULT)?;
        let end = start.checked_add(len).ok_or(Errno::FAULT)?;
        if end > self.bytes.len() {
            return Err(Errno::FAULT);
        }
        Ok(start..end)
    }

    /// Fail with `EFAULT` unless `len` bytes at `ptr` are inside memory.
    /// Used to validate result pointers before a call has side effects.
    pub fn check(&self, ptr: u32, len: u32) -> WasiResult {
        self.range(ptr, len).map(|_| ())
    }

    pub fn slice(&self, ptr: u32, len: u32) -> WasiResult<&[u8]> {
        let range = self.range(ptr, len)?;
        Ok(&self.bytes[range])
    }

    pub fn slice_mut(&mut self, ptr: u32, len: u32) -> WasiResult<&mut [u8]> {
        let range = self.range(ptr, len)?;
        Ok(&mut self.bytes[range])
    }

    fn array<const N: usize>(&self, ptr: u32) -> WasiResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.slice(ptr, N as u32)?);
        Ok(out)
    }

    pub fn read_u8(&self, ptr: u32) -> WasiResult<u8> {
        Ok(self.array::<1>(ptr)?[0])
    }

    pub fn read_u16(&self, ptr: u32) -> WasiResult<u16> {
        Ok(u16::from_le_bytes(self.array(ptr)?))
    }

    pub fn read_u32(&self, ptr: u32) -> WasiResult<u32> {
        Ok(u32::from_le_bytes(self.array(ptr)?))
    }

    pub fn read_u64(&self, ptr: u32) -> WasiResult<u64> {
        Ok(u64::from_le_bytes(self.array(ptr)?))
    }

    pub fn write(&mut self, ptr: u32, data: &[u8]) -> WasiResult {
        let len = u32::try_from(data.len()).map_err(|_| Errno::FAULT)?;
        self.slice_mut(ptr, len)?.copy_from_slice(data);
        Ok(())
    }

    pub fn write_u8(&mut self, ptr: u32, v: u8) -> WasiResult {
        self.write(ptr, &[v])
    }

    pub fn write_u16(&mut self, ptr: u32, v: u16) -> WasiResult {
        self.write(ptr, &v.to_le_bytes())
    }

    pub fn write_u32(&mut self, ptr: u32, v: u32) -> WasiResult {
        self.write(ptr, &v.to_le_bytes())
    }

    pub fn write_u64(&mut self, ptr: u32, v: u64) -> WasiResult {
        self.write(ptr, &v.to_le_bytes())
    }

    /// A guest string (`ptr`, `len`), copied out. Invalid UTF-8 is `EILSEQ`,
    /// as in wasmtime-wasi.
    pub fn string(&self, ptr: u32, len: u32) -> WasiResult<String> {
        let bytes = self.slice(ptr, len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Errno::ILSEQ)
    }

    /// The first non-empty buffer of an iovec array, or an empty one.
    ///
    /// wasmtime-wasi performs exactly one read or write per call on that
    /// buffer (guests loop on short transfers), so this matches it; entries
    /// after the first non-empty one are never read.
    pub fn first_nonempty_iovec(&self, iovs: u32, count: u32) -> WasiResult<IoVec> {
        for i in 0..count {
            let at = i
                .checked_mul(8)
                .and_then(|off| iovs.checked_add(off))
                .ok_or(Errno::FAULT)?;
            let ptr = self.read_u32(at)?;
            let len = self.read_u32(at.checked_add(4).ok_or(Errno::FAULT)?)?;
            if len != 0 {
                self.check(ptr, len)?;
                return Ok(IoVec { ptr, len });
            }
        }
        Ok(IoVec { ptr: 0, len: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_is_efault_not_panic() {
        let mut bytes = vec![0u8; 16];
        let mut mem = GuestMemory::new(&mut bytes);
        assert_eq!(mem.read_u32(13), Err(Errno::FAULT));
        assert_eq!(mem.read_u64(u32::MAX), Err(Errno::FAULT));
        assert_eq!(mem.write_u32(14, 1), Err(Errno::FAULT));
        assert_eq!(mem.slice(u32::MAX, u32::MAX).err(), Some(Errno::FAULT));
        assert_eq!(mem.string(8, 9).err(), Some(Errno::FAULT));
        assert!(mem.read_u32(12).is_ok());
        assert!(mem.slice(16, 0).is_ok());
    }

    #[test]
    fn values_are_little_endian_and_unaligned_ok() {
        let mut bytes = vec![0u8; 16];
        let mut mem = GuestMemory::new(&mut bytes);
        mem.write_u64(3, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(mem.read_u64(3).unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(mem.read_u8(3).unwrap(), 8);
        assert_eq!(mem.read_u16(3).unwrap(), 0x0708);
    }

    #[test]
    fn iovecs_skip_empty_and_check_bounds() {
        let mut bytes = vec![0u8; 64];
        let mut mem = GuestMemory::new(&mut bytes);
        // iov[0] = (40, 0), iov[1] = (40, 8)
        mem.write_u32(0, 40).unwrap();
        mem.write_u32(8, 40).unwrap();
        mem.write_u32(12, 8).unwrap();
        assert_eq!(
            mem.first_nonempty_iovec(0, 2).unwrap(),
            IoVec { ptr: 40, len: 8 }
        );
        mem.write_u32(12, 100).unwrap();
        assert_eq!(mem.first_nonempty_iovec(0, 2), Err(Errno::FAULT));
        assert_eq!(mem.first_nonempty_iovec(60, 1), Err(Errno::FAULT));
        assert_eq!(mem.string(0, 0).unwrap(), "");
    }

    #[test]
    fn invalid_utf8_is_eilseq() {
        let mut bytes = vec![0xffu8; 4];
        let mem = GuestMemory::new(&mut bytes);
        assert_eq!(mem.string(0, 2), Err(Errno::ILSEQ));
    }
}
