//! Loading the guest: kernel (ELF with a PVH note, or bzImage), initrd,
//! command line, and the boot information of the chosen protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::layout;
use crate::arch::x86_64::regs::EntryMode;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A boot file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// File path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither an x86_64 ELF nor a bzImage, or is corrupt.
    #[error("kernel {path} is not a loadable x86_64 ELF or bzImage: {reason}")]
    BadKernel {
        /// File path.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// An ELF kernel without a PVH entry note (64-bit ELF entry is not supported).
    #[error("kernel {0} is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry(PathBuf),
    /// The initrd does not fit in guest memory above the kernel.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge {
        /// File path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line could not be built.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot information to guest memory failed.
    #[error("cannot write boot information to guest memory: {0}")]
    Configure(String),
}

/// Where and how the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// Guest physical address of the first instruction.
    pub addr: GuestAddress,
    /// Boot protocol.
    pub mode: EntryMode,
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    let file = File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(BootError::Open {
            what,
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    Ok(file)
}

/// Loads the kernel into guest memory and returns the loader's result and
/// the entry point.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
) -> Result<(KernelLoaderResult, EntryPoint), BootError> {
    let mut file = open("kernel", path)?;
    let bad = |reason: String| BootError::BadKernel {
        path: path.to_path_buf(),
        reason,
    };
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|_| bad("file is too short".into()))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| bad(e.to_string()))?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if magic == ELF_MAGIC {
        let result = Elf::load(mem, None, &mut file, himem).map_err(|e| bad(e.to_string()))?;
        match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => Ok((
                result,
                EntryPoint {
                    addr,
                    mode: EntryMode::Pvh,
                },
            )),
            _ => Err(BootError::NoPvhEntry(path.to_path_buf())),
        }
    } else {
        let result = BzImage::load(mem, None, &mut file, himem).map_err(|e| bad(e.to_string()))?;
        // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
        let addr = result
            .kernel_load
            .checked_add(0x200)
            .ok_or_else(|| bad("entry point overflows".into()))?;
        if !mem.address_in_range(addr) {
            return Err(bad("entry point outside guest memory".into()));
        }
        Ok((
            result,
            EntryPoint {
                addr,
                mode: EntryMode::Linux64,
            },
        ))
    }
}

/// Loads the initrd at the top of low memory, page aligned, above `kernel_end`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdPlacement, BootError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let top = layout::low_mem_end(guest_ram_size(mem));
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end || addr < layout::HIMEM_START {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 != size {
        return Err(BootError::Open {
            what: "initrd",
            path: path.to_path_buf(),
            source: std::io::Error::other("file changed size while being read"),
        });
    }
    vm_memory::Bytes::write_slice(mem, &buf, GuestAddress(addr)).map_err(|_| too_large())?;
    Ok(InitrdPlacement {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds the command line object from the configured string.
pub fn build_cmdline(args: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(crate::config::MAX_CMDLINE_LEN)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(args)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(cmdline)
}

/// Writes the command line and the boot information of `entry.mode`.
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    entry: EntryPoint,
    loader: &KernelLoaderResult,
    cmdline: &Cmdline,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let conf = |e: &dyn std::fmt::Display| BootError::Configure(e.to_string());
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline)
        .map_err(|e| conf(&e))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    let e820 = layout::e820_map(guest_ram_size(mem));

    match entry.mode {
        EntryMode::Pvh => {
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .map(|&(addr, size, type_)| hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                })
                .collect();
            let mut start_info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: layout::CMDLINE_START,
                memmap_paddr: layout::PVH_MEMMAP_START,
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
            if let Some(initrd) = initrd {
                let module = hvm_modlist_entry {
                    paddr: initrd.addr.raw_value(),
                    size: initrd.size,
                    ..Default::default()
                };
                start_info.nr_modules = 1;
                start_info.modlist_paddr = layout::PVH_MODLIST_START;
                params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_START));
                params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
                params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(|e| conf(&e))
        }
        EntryMode::Linux64 => {
            let mut bp = boot_params::default();
            if let Some(hdr) = loader.setup_header {
                bp.hdr = hdr;
            }
            bp.hdr.type_of_loader = KERNEL_LOADER_OTHER;
            bp.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            bp.hdr.header = KERNEL_HDR_MAGIC;
            bp.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
            bp.hdr.cmdline_size = cmdline_len as u32;
            if bp.hdr.kernel_alignment == 0 {
                bp.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
            }
            if let Some(initrd) = initrd {
                bp.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
                bp.hdr.ramdisk_size = initrd.size as u32;
            }
            if e820.len() > bp.e820_table.len() {
                return Err(BootError::Configure("e820 map too large".into()));
            }
            for (slot, &(addr, size, type_)) in bp.e820_table.iter_mut().zip(e820.iter()) {
                slot.addr = addr;
                slot.size = size;
                slot.r#type = type_;
            }
            bp.e820_entries = e820.len() as u8;
            let params = BootParams::new(&bp, GuestAddress(layout::ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(|e| conf(&e))
        }
    }
}

/// Total RAM of the guest memory (the sum of its regions).
pub fn guest_ram_size(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::GuestMemoryRegion;
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    /// A scratch file, removed when dropped.
    struct TempFile(PathBuf);

    impl std::ops::Deref for TempFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp(name: &str, bytes: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("husk-boot-test-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        TempFile(p)
    }

    #[test]
    fn cmdline_roundtrip() {
        let c = build_cmdline("console=ttyS0 panic=1").unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 panic=1"
        );
    }

    #[test]
    fn missing_kernel_is_named() {
        let err = load_kernel(&mem(16 << 20), Path::new("/nonexistent/vmlinux")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("kernel /nonexistent/vmlinux"), "{msg}");
    }

    #[test]
    fn garbage_kernel_rejected() {
        let p = temp("garbage", &[0x42; 8192]);
        let err = load_kernel(&mem(16 << 20), &p).unwrap_err();
        assert!(matches!(err, BootError::BadKernel { .. }), "{err}");
        let p = temp("short", &[1, 2]);
        assert!(matches!(
            load_kernel(&mem(16 << 20), &p),
            Err(BootError::BadKernel { .. })
        ));
        // A truncated ELF header.
        let p = temp("elfhead", &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        assert!(matches!(
            load_kernel(&mem(16 << 20), &p),
            Err(BootError::BadKernel { .. })
        ));
    }

    #[test]
    fn initrd_at_top_of_memory() {
        let m = mem(16 << 20);
        let p = temp("initrd", &[7u8; 10000]);
        let placed = load_initrd(&m, &p, 0x200000).unwrap();
        assert_eq!(placed.size, 10000);
        assert_eq!(placed.addr.raw_value() % PAGE_SIZE, 0);
        assert!(placed.addr.raw_value() + 10000 <= 16 << 20);
        let mut buf = [0u8; 4];
        m.read_slice(&mut buf, placed.addr).unwrap();
        assert_eq!(buf, [7; 4]);
    }

    #[test]
    fn initrd_too_large() {
        let m = mem(4 << 20);
        let p = temp("big-initrd", &vec![0u8; 3 << 20]);
        assert!(matches!(
            load_initrd(&m, &p, 0x200000),
            Err(BootError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn linux_zero_page() {
        let m = mem(64 << 20);
        let cmdline = build_cmdline("hello=1").unwrap();
        let entry = EntryPoint {
            addr: GuestAddress(0x100200),
            mode: EntryMode::Linux64,
        };
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x300_0000),
            size: 1234,
        };
        configure_boot(
            &m,
            entry,
            &KernelLoaderResult::default(),
            &cmdline,
            Some(initrd),
        )
        .unwrap();
        let bp: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ bp.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ bp.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ bp.hdr.ramdisk_size }, 1234);
        assert_eq!(bp.e820_entries, 2);
        assert_eq!({ bp.e820_table[1].size }, (64 << 20) - layout::HIMEM_START);
        let mut s = [0u8; 8];
        m.read_slice(&mut s, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&s, b"hello=1\0");
    }

    #[test]
    fn pvh_start_info() {
        let m = mem(64 << 20);
        let cmdline = build_cmdline("x").unwrap();
        let entry = EntryPoint {
            addr: GuestAddress(0x100000),
            mode: EntryMode::Pvh,
        };
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x200_0000),
            size: 99,
        };
        configure_boot(
            &m,
            entry,
            &KernelLoaderResult::default(),
            &cmdline,
            Some(initrd),
        )
        .unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.nr_modules, 1);
        assert_eq!(si.memmap_entries, 2);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 99));
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(si.memmap_paddr + 24)).unwrap();
        assert_eq!(e.addr, layout::HIMEM_START);
    }
}
