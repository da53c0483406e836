//! 64-byte aligned buffers, in their own huge-page memory maps from 2 MiB up.

use super::CpuError;
use super::error::checked_bytes;

/// A 64-byte aligned buffer: vector loads never straddle two cache lines, which costs a
/// second load on every unaligned 512-bit access. Buffers of [`HUGE_PAGE_MIN`] bytes or more
/// are anonymous memory maps that Linux is asked to back with transparent huge pages: the
/// kernels stream weights across hundreds of megabytes per token, and with 4 KiB pages every
/// 4 KiB costs a TLB miss and stops the hardware prefetcher at the page boundary.
pub(super) struct Aligned<T: Copy> {
    storage: Storage,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

enum Storage {
    Lines(Vec<Line>),
    Map(memmap2::MmapMut),
}

/// Smallest buffer placed in its own memory map (and offered huge pages).
const HUGE_PAGE_MIN: usize = 2 << 20;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Copy + Default> Aligned<T> {
    /// `len` zero values (`T` is plain data: integers or floats, for which all-zero bytes are
    /// zero). Fails on a byte size beyond `isize::MAX` or an allocation failure.
    pub(super) fn zeroed(len: usize) -> Result<Self, CpuError> {
        let bytes = checked_bytes("aligned buffer", len, std::mem::size_of::<T>(), 1)?;
        let map = (bytes >= HUGE_PAGE_MIN)
            .then(|| memmap2::MmapMut::map_anon(bytes).ok())
            .flatten();
        let storage = match map {
            Some(map) => {
                // Advisory: without transparent huge pages the map works as it is.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                Storage::Map(map)
            }
            None => {
                let lines = bytes.div_ceil(64);
                let mut v = Vec::new();
                v.try_reserve_exact(lines)
                    .map_err(|_| CpuError::Alloc { bytes })?;
                v.resize(lines, Line([0; 64]));
                Storage::Lines(v)
            }
        };
        Ok(Self {
            storage,
            len,
            _t: std::marker::PhantomData,
        })
    }

    pub(super) fn from_slice(v: &[T]) -> Result<Self, CpuError> {
        let mut a = Self::zeroed(v.len())?;
        a.copy_from_slice(v);
        Ok(a)
    }
}

impl<T: Copy + Default> Clone for Aligned<T> {
    /// Like `Vec`'s clone, aborts when memory runs out (the size itself was checked when the
    /// original was allocated).
    fn clone(&self) -> Self {
        Self::from_slice(self).unwrap_or_else(|_| {
            let bytes = std::mem::size_of_val::<[T]>(self);
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(bytes.max(1), 64)
                    .unwrap_or(std::alloc::Layout::new::<Line>()),
            )
        })
    }
}

impl<T: Copy> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let ptr = match &self.storage {
            Storage::Lines(lines) => lines.as_ptr() as *const T,
            Storage::Map(map) => map.as_ptr() as *const T,
        };
        // SAFETY: the storage holds at least `len` values of T (plain data, zero-initialised
        // or written through `DerefMut`), 64-byte aligned (page-aligned for a map).
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let ptr = match &mut self.storage {
            Storage::Lines(lines) => lines.as_mut_ptr() as *mut T,
            Storage::Map(map) => map.as_mut_ptr() as *mut T,
        };
        // SAFETY: as in `deref`, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
    }
}
