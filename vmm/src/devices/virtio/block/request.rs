//! Parsing a virtio-blk request from a descriptor chain (virtio 1.x, 5.2.6).
//! The chain is untrusted: directions, lengths, addresses, sector ranges and
//! the total size are checked here, before any I/O.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer accepted in one request.
pub const MAX_REQUEST_BYTES: u64 = 16 << 20;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Size of the drive ID returned by GET_ID.
pub const ID_BYTES: u32 = 20;

/// What the driver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Flush written data to stable storage.
    Flush,
    /// Return the drive ID.
    GetId,
    /// Anything else: answered with UNSUPP.
    Unsupported(u32),
}

/// Why a chain is not a valid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptors or no room for the status byte.
    #[error("descriptor chain too short")]
    TooShort,
    /// The header is not in a device-readable descriptor of 16 bytes.
    #[error("bad request header")]
    BadHeader,
    /// The status descriptor is not device-writable.
    #[error("status descriptor is not writable")]
    BadStatus,
    /// A data descriptor goes the wrong way for the request type.
    #[error("data descriptor has the wrong direction")]
    WrongDirection,
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory")]
    OutOfMemory,
    /// The transfer is not a whole number of sectors.
    #[error("transfer is not a multiple of the sector size")]
    Unaligned,
    /// The transfer is larger than [`MAX_REQUEST_BYTES`].
    #[error("transfer too large")]
    TooLarge,
    /// The sectors lie (partly) beyond the end of the disk.
    #[error("sector range beyond the end of the disk")]
    OutOfRange,
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Type.
    pub kind: RequestType,
    /// First sector.
    pub sector: u64,
    /// Data buffers (address, length) in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Total data length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Where to write the status byte of a chain that failed to parse, if the
/// last descriptor can take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusOnly(pub Option<GuestAddress>);

impl Request {
    /// Parses and checks a chain against a disk of `capacity_sectors`.
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        capacity_sectors: u64,
    ) -> Result<Request, (RequestError, StatusOnly)> {
        let descs: Vec<_> = chain.collect();
        let last = descs.last().copied();
        // The status byte is the last byte of the last descriptor.
        let status_only = StatusOnly(
            last.filter(|d| d.is_write_only() && d.len() >= 1)
                .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
                .filter(|a| mem.check_address(*a).is_some()),
        );
        let fail = |e| Err((e, status_only));
        if descs.len() < 2 {
            return fail(RequestError::TooShort);
        }
        let header = descs[0];
        if header.is_write_only() || header.len() < 16 {
            return fail(RequestError::BadHeader);
        }
        let kind_raw: u32 = match mem.read_obj(header.addr()) {
            Ok(v) => v,
            Err(_) => return fail(RequestError::OutOfMemory),
        };
        let sector: u64 = match header
            .addr()
            .checked_add(8)
            .and_then(|a| mem.read_obj(a).ok())
        {
            Some(v) => v,
            None => return fail(RequestError::OutOfMemory),
        };
        let status = descs[descs.len() - 1];
        if !status.is_write_only() || status.len() < 1 {
            return fail(RequestError::BadStatus);
        }
        // The status byte is the last byte of the last descriptor.
        let status_addr = match status.addr().checked_add(u64::from(status.len()) - 1) {
            Some(a) if mem.check_address(a).is_some() => a,
            _ => return fail(RequestError::OutOfMemory),
        };
        let kind = match kind_raw {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        };
        // Data: the descriptors between header and status, plus the part of
        // the status descriptor before its last byte.
        let mut data = Vec::new();
        let mut data_len: u64 = 0;
        let mut push = |addr: GuestAddress, len: u32, write_only: bool| {
            if len == 0 {
                return Ok(());
            }
            let device_writes = matches!(kind, RequestType::In | RequestType::GetId);
            if write_only != device_writes {
                return Err(RequestError::WrongDirection);
            }
            if !mem.check_range(addr, len as usize) {
                return Err(RequestError::OutOfMemory);
            }
            data_len += u64::from(len);
            if data_len > MAX_REQUEST_BYTES {
                return Err(RequestError::TooLarge);
            }
            data.push((addr, len));
            Ok(())
        };
        for d in &descs[1..descs.len() - 1] {
            if let Err(e) = push(d.addr(), d.len(), d.is_write_only()) {
                return fail(e);
            }
        }
        if status.len() > 1 {
            if let Err(e) = push(status.addr(), status.len() - 1, true) {
                return fail(e);
            }
        }
        match kind {
            RequestType::In | RequestType::Out => {
                if data_len % SECTOR_SIZE != 0 {
                    return fail(RequestError::Unaligned);
                }
                let end = sector
                    .checked_add(data_len / SECTOR_SIZE)
                    .filter(|end| *end <= capacity_sectors);
                if end.is_none() {
                    return fail(RequestError::OutOfRange);
                }
            }
            RequestType::GetId if data_len < u64::from(ID_BYTES) => {
                return fail(RequestError::TooShort);
            }
            _ => {}
        }
        Ok(Request {
            kind,
            sector,
            data,
            data_len,
            status: status_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestMemoryMmap;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    /// Builds a chain of (addr, len, flags) and parses it.
    fn parse_chain(
        m: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        header: Option<(u32, u64)>,
    ) -> Result<Request, (RequestError, StatusOnly)> {
        let vq = MockSplitQueue::new(m, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() {
                    (i + 1) as u16
                } else {
                    0
                };
                let flags = if i + 1 < descs.len() {
                    flags | F_NEXT
                } else {
                    flags
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        vq.add_desc_chains(&raw, 0).unwrap();
        if let Some((t, s)) = header {
            m.write_obj(t, GuestAddress(descs[0].0)).unwrap();
            m.write_obj(s, GuestAddress(descs[0].0 + 8)).unwrap();
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(m).unwrap();
        Request::parse(chain, m, 100)
    }

    #[test]
    fn read_request() {
        let m = mem();
        let r = parse_chain(
            &m,
            &[
                (0x1000, 16, 0),
                (0x2000, 1024, F_WRITE),
                (0x3000, 1, F_WRITE),
            ],
            Some((0, 7)),
        )
        .unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!(r.sector, 7);
        assert_eq!(r.data, vec![(GuestAddress(0x2000), 1024)]);
        assert_eq!(r.status, GuestAddress(0x3000));
    }

    #[test]
    fn data_and_status_in_one_descriptor() {
        let m = mem();
        let r = parse_chain(&m, &[(0x1000, 16, 0), (0x2000, 513, F_WRITE)], Some((0, 0))).unwrap();
        assert_eq!(r.data, vec![(GuestAddress(0x2000), 512)]);
        assert_eq!(r.status, GuestAddress(0x2200));
    }

    #[test]
    fn write_and_flush() {
        let m = mem();
        let r = parse_chain(
            &m,
            &[(0x1000, 16, 0), (0x2000, 512, 0), (0x3000, 1, F_WRITE)],
            Some((1, 99)),
        )
        .unwrap();
        assert_eq!((r.kind, r.data_len), (RequestType::Out, 512));
        let r = parse_chain(&m, &[(0x1000, 16, 0), (0x3000, 1, F_WRITE)], Some((4, 0))).unwrap();
        assert_eq!(r.kind, RequestType::Flush);
        let r = parse_chain(&m, &[(0x1000, 16, 0), (0x3000, 1, F_WRITE)], Some((77, 0))).unwrap();
        assert_eq!(r.kind, RequestType::Unsupported(77));
    }

    #[test]
    fn hostile_chains() {
        let m = mem();
        let bad = |descs: &[(u64, u32, u16)], hdr| parse_chain(&m, descs, hdr).unwrap_err().0;
        // Read into a device-readable buffer.
        assert_eq!(
            bad(
                &[(0x1000, 16, 0), (0x2000, 512, 0), (0x3000, 1, F_WRITE)],
                Some((0, 0))
            ),
            RequestError::WrongDirection
        );
        // Write from a device-writable buffer.
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0x2000, 512, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((1, 0))
            ),
            RequestError::WrongDirection
        );
        // Header writable or short.
        assert_eq!(
            bad(&[(0x1000, 16, F_WRITE), (0x3000, 1, F_WRITE)], Some((0, 0))),
            RequestError::BadHeader
        );
        assert_eq!(
            bad(&[(0x1000, 8, 0), (0x3000, 1, F_WRITE)], Some((0, 0))),
            RequestError::BadHeader
        );
        // Status not writable.
        assert_eq!(
            bad(&[(0x1000, 16, 0), (0x3000, 1, 0)], Some((4, 0))),
            RequestError::BadStatus
        );
        // Only one descriptor.
        assert_eq!(
            bad(&[(0x1000, 16, 0)], Some((4, 0))),
            RequestError::TooShort
        );
        // Outside guest memory.
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0xfff_0000, 512, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((0, 0))
            ),
            RequestError::OutOfMemory
        );
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0x1ff_fe00, 1024, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((0, 0))
            ),
            RequestError::OutOfMemory
        );
        // Not whole sectors; beyond the disk; sector overflow.
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0x2000, 100, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((0, 0))
            ),
            RequestError::Unaligned
        );
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0x2000, 1024, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((0, 99))
            ),
            RequestError::OutOfRange
        );
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0x2000, 512, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((0, u64::MAX))
            ),
            RequestError::OutOfRange
        );
        // Too large in total.
        let big = 8 * 1024 * 1024 + 512;
        assert_eq!(
            bad(
                &[
                    (0x1000, 16, 0),
                    (0x10_0000, big, F_WRITE),
                    (0x90_0000, big, F_WRITE),
                    (0x3000, 1, F_WRITE)
                ],
                Some((0, 0))
            ),
            RequestError::TooLarge
        );
        // The status address survives for failed requests when writable.
        let (_, status) =
            parse_chain(&m, &[(0x1000, 8, 0), (0x3000, 1, F_WRITE)], None).unwrap_err();
        assert_eq!(status, StatusOnly(Some(GuestAddress(0x3000))));
    }
}
