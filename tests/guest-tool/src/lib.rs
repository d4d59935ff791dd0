//! What the Linux test guests and the host side of the tests share: a
//! reproducible byte stream (the test data, never stored) and its checksum,
//! and the framing of a checked stream exchange. `husk-guest-tool` (this
//! crate's binary) runs in the guest; the integration tests use the same
//! functions on the host.
//!
//! A checked exchange over one connection, initiated by either side:
//! 1. the initiator sends `SEND <bytes> <reply bytes> <seed>\n`, then
//!    `<bytes>` of [`Pattern`]`(seed)`, then shuts down its writing side;
//! 2. the other side reads to the end, compares every byte with the
//!    pattern, answers `GOT <count> <ok|bad>\n`, then `<reply bytes>` of
//!    `Pattern(seed + 1)`, then closes;
//! 3. the initiator reads the answer and the reply to the end and checks
//!    them the same way.

use std::io::{BufRead, Read, Write};

/// A reproducible pseudo-random byte stream (xorshift64*).
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.word = self.next_word();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }

    /// Compares `buf` with the next bytes of the stream; true when equal.
    pub fn check(&mut self, buf: &[u8]) -> bool {
        let mut ok = true;
        for &b in buf {
            if self.used == 8 {
                self.word = self.next_word();
                self.used = 0;
            }
            ok &= b == self.word[self.used];
            self.used += 1;
        }
        ok
    }
}

/// FNV-1a, 64 bits.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes `len` bytes of `Pattern(seed)` to `w`.
pub fn send_pattern(w: &mut impl Write, seed: u64, len: u64) -> std::io::Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads `r` to its end, comparing with `Pattern(seed)`; returns the count
/// and whether every byte matched.
pub fn receive_pattern(r: &mut impl Read, seed: u64) -> std::io::Result<(u64, bool)> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut count, mut ok) = (0u64, true);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((count, ok));
        }
        ok &= p.check(&buf[..n]);
        count += n as u64;
    }
}

/// The initiator's side of a checked exchange on a connected stream:
/// returns a description of what went wrong, if anything.
pub fn initiate<S: Read + Write>(
    stream: &mut S,
    shutdown_write: impl FnOnce(&S) -> std::io::Result<()>,
    bytes: u64,
    reply: u64,
    seed: u64,
) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    stream
        .write_all(format!("SEND {bytes} {reply} {seed}\n").as_bytes())
        .map_err(|e| io("send header", e))?;
    send_pattern(stream, seed, bytes).map_err(|e| io("send data", e))?;
    shutdown_write(stream).map_err(|e| io("shut down writing", e))?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| io("read answer", e))?;
    if line.trim_end() != format!("GOT {bytes} ok") {
        return Err(format!(
            "the peer answered {:?} to {bytes} bytes",
            line.trim_end()
        ));
    }
    let (count, ok) = receive_pattern(&mut reader, seed + 1).map_err(|e| io("read reply", e))?;
    if count != reply || !ok {
        return Err(format!(
            "reply: {count} of {reply} bytes, {}",
            if ok { "content right" } else { "content wrong" }
        ));
    }
    Ok(())
}

/// The answering side of a checked exchange on a connected stream.
pub fn answer<S: Read + Write>(stream: &mut S) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if header.len() > 100 {
            return Err("header too long".into());
        }
        match stream.read(&mut byte).map_err(|e| io("read header", e))? {
            0 => return Err("no header".into()),
            _ => header.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&header);
    let fields: Vec<u64> = text
        .trim_end()
        .strip_prefix("SEND ")
        .ok_or_else(|| format!("bad header {text:?}"))?
        .split(' ')
        .map(|f| f.parse().map_err(|_| format!("bad header {text:?}")))
        .collect::<Result<_, _>>()?;
    let [bytes, reply, seed] = fields[..] else {
        return Err(format!("bad header {text:?}"));
    };
    let (count, ok) = receive_pattern(stream, seed).map_err(|e| io("read data", e))?;
    let verdict = if count == bytes && ok { "ok" } else { "bad" };
    stream
        .write_all(format!("GOT {count} {verdict}\n").as_bytes())
        .map_err(|e| io("answer", e))?;
    send_pattern(stream, seed + 1, reply).map_err(|e| io("send reply", e))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(format!(
            "received {count} of {bytes} bytes, content {verdict}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_reproducible_and_checked() {
        let mut a = vec![0u8; 1000];
        Pattern::new(7).fill(&mut a);
        let mut p = Pattern::new(7);
        assert!(p.check(&a[..333]));
        assert!(p.check(&a[333..]));
        let mut b = a.clone();
        b[500] ^= 1;
        assert!(!Pattern::new(7).check(&b));
        let mut c = vec![0u8; 1000];
        Pattern::new(8).fill(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn an_exchange_over_a_socket_pair() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || answer(&mut b));
        initiate(
            &mut a,
            |s| s.shutdown(std::net::Shutdown::Write),
            300_000,
            12_345,
            42,
        )
        .unwrap();
        t.join().unwrap().unwrap();
    }
}
