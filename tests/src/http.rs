//! Raw HTTP/1.1 request bytes, built by hand so tests know every byte that goes on the wire.

use std::io::Write;

/// One HTTP/1.1 request as bytes: `bytes[..head_len]` is the request line and headers
/// (through the blank line), the rest is the body as framed on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub bytes: Vec<u8>,
    pub head_len: usize,
    /// The body before any transfer framing (what a server hands its handler).
    pub payload: Vec<u8>,
}

impl HttpRequest {
    pub fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len]
    }

    /// The body as framed on the wire (chunk framing included).
    pub fn wire_body(&self) -> &[u8] {
        &self.bytes[self.head_len..]
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Builds a request. Defaults: `POST /v1/logs`, `Host: dt-test`,
/// `Content-Type: application/x-protobuf`, `Content-Length` computed.
#[derive(Clone, Debug)]
pub struct HttpRequestBuilder {
    method: String,
    path: String,
    host: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
    gzip: bool,
    chunk_size: Option<usize>,
}

impl Default for HttpRequestBuilder {
    fn default() -> Self {
        HttpRequestBuilder {
            method: "POST".into(),
            path: "/v1/logs".into(),
            host: "dt-test".into(),
            content_type: Some("application/x-protobuf".into()),
            content_encoding: None,
            extra: Vec::new(),
            body: Vec::new(),
            gzip: false,
            chunk_size: None,
        }
    }
}

impl HttpRequestBuilder {
    /// `POST /v1/logs` with a protobuf body.
    pub fn logs(body: Vec<u8>) -> Self {
        HttpRequestBuilder {
            body,
            ..Default::default()
        }
    }

    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    pub fn path(mut self, p: &str) -> Self {
        self.path = p.into();
        self
    }

    pub fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }

    pub fn content_type(mut self, ct: Option<&str>) -> Self {
        self.content_type = ct.map(Into::into);
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.extra.push((k.into(), v.into()));
        self
    }

    pub fn body(mut self, b: Vec<u8>) -> Self {
        self.body = b;
        self
    }

    /// Compresses the body with gzip and sets `Content-Encoding: gzip`.
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked` in chunks of `size` bytes.
    pub fn chunked(mut self, size: usize) -> Self {
        assert!(size > 0);
        self.chunk_size = Some(size);
        self
    }

    pub fn build(self) -> HttpRequest {
        let mut payload = self.body;
        let mut content_encoding = self.content_encoding;
        if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&payload).expect("gzip");
            payload = enc.finish().expect("gzip");
            content_encoding = Some("gzip".into());
        }
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, self.path, self.host
        );
        if let Some(ct) = &self.content_type {
            head += &format!("Content-Type: {ct}\r\n");
        }
        if let Some(ce) = &content_encoding {
            head += &format!("Content-Encoding: {ce}\r\n");
        }
        for (k, v) in &self.extra {
            head += &format!("{k}: {v}\r\n");
        }
        let wire_body = match self.chunk_size {
            None => {
                head += &format!("Content-Length: {}\r\n", payload.len());
                payload.clone()
            }
            Some(size) => {
                head += "Transfer-Encoding: chunked\r\n";
                let mut out = Vec::new();
                for c in payload.chunks(size) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
        };
        head += "User-Agent: dt-tests/0.1\r\n\r\n";
        let head_len = head.len();
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&wire_body);
        HttpRequest {
            bytes,
            head_len,
            payload,
        }
    }
}

/// `POST /v1/logs` with `body` as protobuf.
pub fn post_logs(body: Vec<u8>) -> HttpRequest {
    HttpRequestBuilder::logs(body).build()
}
