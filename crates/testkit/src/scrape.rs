//! [`scrape`]: a blocking `GET /metrics` of a Prometheus endpoint (feature
//! `metrics`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Fetches `http://ADDR/metrics` with a plain HTTP/1.1 `GET` over
/// `std::net` (`Connection: close`) and returns the body of a `200` answer,
/// de-chunked if the server sent it chunked.
///
/// Connecting, and each write and read, give up after `timeout` (so a slow
/// trickle can take longer in total; a silent server cannot hang the test).
///
/// # Errors
///
/// An [`io::Error`] whose message names the URL: the connection failed or
/// timed out, the answer is not HTTP, its status is not `200` (the message
/// quotes the status line), or a chunked body is malformed.
///
/// ```no_run
/// # use std::time::Duration;
/// let addr = "127.0.0.1:9000".parse().unwrap();
/// let body = testkit::scrape(addr, Duration::from_secs(5)).unwrap();
/// assert!(body.contains("zab_state"));
/// ```
pub fn scrape(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let url = format!("http://{addr}/metrics");
    fetch(addr, timeout).map_err(|e| io::Error::new(e.kind(), format!("scraping {url}: {e}")))
}

fn fetch(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let status = status.trim_end();
    if !status.starts_with("HTTP/1.") {
        return Err(invalid(format!("not an HTTP answer: {status:?}")));
    }
    if status.split(' ').nth(1) != Some("200") {
        return Err(io::Error::other(format!("answered {status:?}")));
    }
    let mut chunked = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(invalid("the answer ends inside its headers".to_owned()));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("transfer-encoding")
            && value.trim().eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = size.trim_end();
            let hex = size.split(';').next().unwrap_or("").trim();
            let len = usize::from_str_radix(hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {size:?}")))?;
            if len == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + len, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
            if crlf != *b"\r\n" {
                return Err(invalid(format!(
                    "chunk of {len} bytes not followed by CRLF"
                )));
            }
        }
    } else {
        // `Connection: close`: the body runs to the end of the stream.
        reader.read_to_end(&mut body)?;
    }
    String::from_utf8(body).map_err(|e| invalid(format!("the body is not UTF-8: {e}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Serves `answer` to one connection after reading its request head.
    fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            reader.get_mut().write_all(answer).unwrap();
        });
        addr
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn returns_the_body_of_a_plain_answer() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nup 1\nx 2");
        assert_eq!(scrape(addr, TIMEOUT).unwrap(), "up 1\nx 2");
    }

    #[test]
    fn dechunks_a_chunked_answer() {
        let addr = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nup 1\n\r\n4\r\nx 2\n\r\n0\r\n\r\n",
        );
        assert_eq!(scrape(addr, TIMEOUT).unwrap(), "up 1\nx 2\n");
    }

    #[test]
    fn a_non_200_answer_is_an_error_quoting_the_status() {
        let addr = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let e = scrape(addr, TIMEOUT).unwrap_err().to_string();
        assert!(e.contains(&format!("http://{addr}/metrics")), "{e}");
        assert!(e.contains("404 Not Found"), "{e}");
    }

    #[test]
    fn a_refused_connection_names_the_address() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = scrape(addr, TIMEOUT).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let e = scrape(addr, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        drop(listener);
    }
}
