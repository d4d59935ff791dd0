//! Length-prefixed JSON frames.

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest frame, in bytes, either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer closed the connection at a frame boundary.
    #[error("connection closed")]
    Closed,
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    /// The frame is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Reads one frame's bytes.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, CodecError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(CodecError::Closed),
            Ok(0) => return Err(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads and decodes one message.
pub fn read_message<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, CodecError> {
    let frame = read_frame(r)?;
    serde_json::from_slice(&frame).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Encodes and writes one message.
pub fn write_message<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), CodecError> {
    let body = serde_json::to_vec(msg).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(CodecError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Call, Request};

    #[test]
    fn roundtrip() {
        let mut buf = Vec::new();
        let req = Request {
            id: 7,
            call: Call::Ping,
        };
        write_message(&mut buf, &req).unwrap();
        let back: Request = read_message(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn bounded_and_checked() {
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame(&mut huge.as_slice()),
            Err(CodecError::TooLarge(_))
        ));
        assert!(matches!(read_frame(&mut &b""[..]), Err(CodecError::Closed)));
        assert!(matches!(
            read_frame(&mut &b"\0\0"[..]),
            Err(CodecError::Io(_))
        ));
        let mut short = 10u32.to_be_bytes().to_vec();
        short.extend_from_slice(b"abc");
        assert!(matches!(
            read_frame(&mut short.as_slice()),
            Err(CodecError::Io(_))
        ));
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        assert!(matches!(
            read_message::<_, Request>(&mut bad.as_slice()),
            Err(CodecError::Malformed(_))
        ));
    }
}
