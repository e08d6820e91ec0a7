//! Reading one newline-terminated message with a cap on its length, so a peer that never
//! sends a newline cannot make the client buffer without bound.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::error::QmpError;

/// Reads the next non-blank line into `buf` (cleared first, without the line end).
/// Returns `Ok(false)` at a clean end of stream; a stream ending mid-line is
/// [`QmpError::Closed`], a line over `max` bytes is [`QmpError::LineTooLong`].
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, QmpError> {
    loop {
        buf.clear();
        if !read_raw_line(r, buf, max).await? {
            return Ok(false);
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(true);
        }
    }
}

async fn read_raw_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, QmpError> {
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return if buf.is_empty() {
                Ok(false)
            } else {
                Err(QmpError::Closed)
            };
        }
        let (take, consumed, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, i + 1, true),
            None => (avail.len(), avail.len(), false),
        };
        if buf.len() + take > max {
            return Err(QmpError::LineTooLong { max });
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(consumed);
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<String, String>> {
        let mut r = input;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, &mut buf, max).await {
                Ok(true) => out.push(Ok(String::from_utf8_lossy(&buf).into_owned())),
                Ok(false) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_skips_blank_ones() {
        let got = lines(b"{\"a\":1}\r\n\r\n  \n{\"b\":2}\n", 100).await;
        assert_eq!(got, vec![Ok("{\"a\":1}".into()), Ok("{\"b\":2}".into())]);
    }

    #[tokio::test]
    async fn caps_the_length() {
        let got = lines(b"12345\n123456\n", 5).await;
        assert_eq!(got[0], Ok("12345".into()));
        assert_eq!(
            got[1],
            Err("qmp server sent a line longer than 5 bytes".into())
        );
    }

    #[tokio::test]
    async fn end_of_stream_mid_line_is_closed() {
        let got = lines(b"{\"a\":1}\n{\"b\"", 100).await;
        assert_eq!(got[1], Err("qmp server closed the connection".into()));
    }
}
