//! The virtio-vsock packet header (virtio 1.x, 5.10.6), little endian.

/// Size of the header on the wire.
pub const HEADER_LEN: usize = 44;
/// Largest payload accepted in one packet from the guest.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Stream sockets, the only type supported.
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Accept.
    pub const RESPONSE: u16 = 2;
    /// Reset.
    pub const RST: u16 = 3;
    /// Shut down one or both directions.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Tell the peer about buffer space.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Ask the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

/// Why a header from the guest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("packet shorter than its header")]
    Short,
    /// The payload length is above [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is too large")]
    TooLarge(u32),
    /// Not a stream packet.
    #[error("socket type {0} is not supported")]
    Type(u16),
    /// Unknown operation.
    #[error("unknown operation {0}")]
    Op(u16),
}

impl PacketHeader {
    /// Decodes a header, checking what can be checked on its own.
    pub fn decode(b: &[u8]) -> Result<PacketHeader, PacketError> {
        if b.len() < HEADER_LEN {
            return Err(PacketError::Short);
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or([0; 2]));
        let h = PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        };
        if h.len > MAX_PAYLOAD {
            return Err(PacketError::TooLarge(h.len));
        }
        if h.type_ != TYPE_STREAM {
            return Err(PacketError::Type(h.type_));
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op) {
            return Err(PacketError::Op(h.op));
        }
        Ok(h)
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn roundtrip() {
        let h = sample();
        assert_eq!(PacketHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn hostile_headers() {
        assert_eq!(PacketHeader::decode(&[0u8; 43]), Err(PacketError::Short));
        let mut h = sample();
        h.len = MAX_PAYLOAD + 1;
        assert_eq!(
            PacketHeader::decode(&h.encode()),
            Err(PacketError::TooLarge(MAX_PAYLOAD + 1))
        );
        let mut h = sample();
        h.type_ = 2;
        assert_eq!(PacketHeader::decode(&h.encode()), Err(PacketError::Type(2)));
        for bad in [0u16, 8, 0xffff] {
            let mut h = sample();
            h.op = bad;
            assert_eq!(PacketHeader::decode(&h.encode()), Err(PacketError::Op(bad)));
        }
    }
}
