//! A small HTTP/1.1 request reader and response writer for the API socket,
//! on top of httparse. Sizes are capped; anything malformed is an error the
//! server answers with 400 before closing the connection.

use std::io::{Read, Write};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, upper case.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Whether the client asked to close the connection.
    pub close: bool,
}

/// Errors reading a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection between requests.
    #[error("connection closed")]
    Closed,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The request is not valid HTTP/1.x.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head or body is larger than allowed.
    #[error("request too large")]
    TooLarge,
}

/// Reads requests from a stream, keeping bytes of pipelined requests.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
}

impl RequestReader {
    /// A reader with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn fill<R: Read>(&mut self, stream: &mut R) -> Result<usize, HttpError> {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the next request.
    pub fn read_request<R: Read>(&mut self, stream: &mut R) -> Result<Request, HttpError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let method = req.method.unwrap_or_default().to_string();
                    let raw_path = req.path.unwrap_or_default();
                    let path = raw_path.split('?').next().unwrap_or_default().to_string();
                    let mut content_length = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(HttpError::Malformed(
                                "Transfer-Encoding is not supported".into(),
                            ));
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    if content_length > MAX_BODY {
                        return Err(HttpError::TooLarge);
                    }
                    while self.buf.len() < head_len + content_length {
                        if self.fill(stream)? == 0 {
                            return Err(HttpError::Malformed(
                                "body shorter than Content-Length".into(),
                            ));
                        }
                    }
                    let body = self.buf[head_len..head_len + content_length].to_vec();
                    self.buf.drain(..head_len + content_length);
                    return Ok(Request {
                        method,
                        path,
                        body,
                        close,
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(HttpError::TooLarge);
                    }
                    let before = self.buf.len();
                    if self.fill(stream)? == 0 {
                        return Err(if before == 0 {
                            HttpError::Closed
                        } else {
                            HttpError::Malformed("incomplete request head".into())
                        });
                    }
                }
                Err(e) => return Err(HttpError::Malformed(e.to_string())),
            }
        }
    }
}

/// Writes a response with an optional JSON body.
pub fn write_response<W: Write>(
    out: &mut W,
    status: u16,
    body: Option<&serde_json::Value>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nServer: husk-vmm\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Result<Request, String>> {
        let mut r = RequestReader::new();
        let mut cur = std::io::Cursor::new(bytes.to_vec());
        let mut out = vec![];
        loop {
            match r.read_request(&mut cur) {
                Err(HttpError::Closed) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
                Ok(req) => out.push(Ok(req)),
            }
        }
        out
    }

    #[test]
    fn parses_pipelined_requests() {
        let reqs = read_all(
            b"PUT /actions HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /?x=1 HTTP/1.1\r\n\r\n",
        );
        assert_eq!(reqs.len(), 2);
        let a = reqs[0].as_ref().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.body.as_slice()),
            ("PUT", "/actions", &b"hello"[..])
        );
        let b = reqs[1].as_ref().unwrap();
        assert_eq!((b.method.as_str(), b.path.as_str()), ("GET", "/"));
    }

    #[test]
    fn rejects_bad_input() {
        let r = read_all(b"NOT HTTP AT ALL\r\n\r\n");
        assert!(r[0].is_err());
        let r = read_all(b"PUT / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n");
        assert_eq!(r[0].as_ref().unwrap_err(), "request too large");
        let r = read_all(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert!(r[0].as_ref().unwrap_err().contains("body shorter"));
        let r = read_all(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n");
        assert!(r[0].is_err());
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let r = read_all(&huge);
        assert_eq!(r[0].as_ref().unwrap_err(), "request too large");
        let r = read_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(r[0].is_err());
    }

    #[test]
    fn response_format() {
        let mut out = vec![];
        write_response(
            &mut out,
            400,
            Some(&serde_json::json!({"fault_message": "x"})),
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.ends_with("\r\n\r\n{\"fault_message\":\"x\"}"));
        let mut out = vec![];
        write_response(&mut out, 204, None).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Content-Length: 0\r\n")
        );
    }
}
