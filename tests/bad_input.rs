//! Bad input never gets a 5xx: truncated and corrupt media of every kind, clips with no
//! frames or 100,000 frames, absurd dimensions, malformed multipart, and clients that send
//! their headers or body too slowly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use motion_host_tests::{Server, ServerBuilder, clips, json};

fn server() -> Server {
    ServerBuilder::new().arg("--header-timeout=1s").arg("--request-timeout=4s").start()
}

/// A GIF of `frames` 1×1 frames, written by hand so 100,000 frames stay small and quick.
fn tiny_gif(frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff".to_vec();
    for _ in 0..frames {
        out.extend_from_slice(b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00");
    }
    out.push(0x3b);
    out
}

/// A mono Y4M of `frames` 2×2 frames.
fn tiny_y4m(frames: usize) -> Vec<u8> {
    let mut out = b"YUV4MPEG2 W2 H2 F25:1 Cmono\n".to_vec();
    for i in 0..frames {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&[(i % 251) as u8; 4]);
    }
    out
}

/// Any answer but a server error.
const LENIENT: u16 = 0;

/// A Y4M whose header has a field starting with a two-byte character (a fuzzer's find that
/// once trapped the guest).
fn non_ascii_y4m() -> Vec<u8> {
    let mut data = "YUV4MPEG2 W2 H2 Cmono \u{5fa}1\n".as_bytes().to_vec();
    data.extend_from_slice(b"FRAME\n\x10\x20\x30\x40");
    data
}

fn flip(mut data: Vec<u8>, from: usize) -> Vec<u8> {
    for (i, b) in data.iter_mut().enumerate().skip(from) {
        *b ^= (i as u8).wrapping_mul(151) | 1;
    }
    data
}

#[test]
fn bad_media_gets_4xx_and_good_extremes_are_served() {
    let server = &server();
    let frame = clips::frame(64, 48, 3);
    let (png, jpeg) = (clips::png(&frame), clips::jpeg(&frame));
    let gif = clips::gif(4, 32, 24);
    let y4m = clips::y4m(4, 32, 24);

    // (what, content type, body, expected status; LENIENT: the decoder may recover what is
    // left, so 200 or a 4xx)
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("truncated PNG", "image/png", png[..png.len() / 2].to_vec(), 422),
        ("corrupt PNG", "image/png", flip(png.clone(), 40), 422),
        ("PNG of only its signature", "image/png", png[..8].to_vec(), 422),
        ("truncated JPEG", "image/jpeg", jpeg[..jpeg.len() / 3].to_vec(), LENIENT),
        ("corrupt JPEG", "image/jpeg", flip(jpeg.clone(), 20), LENIENT),
        ("truncated GIF", "image/gif", gif[..gif.len() / 2].to_vec(), 422),
        ("corrupt GIF", "image/gif", flip(gif.clone(), 13), LENIENT),
        ("truncated Y4M", "video/x-yuv4mpeg", y4m[..y4m.len() - 100].to_vec(), 422),
        ("Y4M without a header line", "video/x-yuv4mpeg", b"YUV4MPEG2 W2 H2".to_vec(), 422),
        ("Y4M with zero frames", "video/x-yuv4mpeg", tiny_y4m(0), 422),
        ("GIF with zero frames", "image/gif", tiny_gif(0), 422),
        ("Y4M of 100,001 frames", "video/x-yuv4mpeg", tiny_y4m(100_001), 422),
        ("GIF of 100,001 frames", "image/gif", tiny_gif(100_001), 422),
        ("PNG claiming 100000x100000", "image/png", clips::png_header_claiming(100_000, 100_000), 422),
        (
            "Y4M claiming 100000x100000",
            "video/x-yuv4mpeg",
            b"YUV4MPEG2 W100000 H100000\nFRAME\n".to_vec(),
            422,
        ),
        ("empty body", "image/png", Vec::new(), 422),
        ("PNG sent as JPEG", "image/jpeg", png.clone(), 422),
        ("unknown type", "application/x-unknown", png.clone(), 415),
        ("MP4 cut inside its ftyp box", "video/mp4", b"\0\0\0\x18ftypmp42".to_vec(), 422),
        ("a video container the guest does not read", "video/webm", b"\x1a\x45\xdf\xa3".to_vec(), 415),
        ("multipart without a boundary", "multipart/form-data", png.clone(), 400),
        (
            "multipart cut short",
            "multipart/form-data; boundary=B",
            b"--B\r\nContent-Type: image/png\r\n".to_vec(),
            400,
        ),
        ("multipart of garbage", "multipart/form-data; boundary=B", flip(png.clone(), 0), 400),
        // The good extremes: the most frames a clip may have.
        ("Y4M of 100,000 frames", "video/x-yuv4mpeg", tiny_y4m(100_000), 200),
        ("GIF of 100,000 frames", "image/gif", tiny_gif(100_000), 200),
        ("octet-stream", "application/octet-stream", png.clone(), 415),
        ("Y4M with a non-ASCII header field", "video/x-yuv4mpeg", non_ascii_y4m(), 200),
    ];
    for (what, content_type, body, expected) in cases {
        let r = server
            .client()
            .post(server.url("/v1/classify"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (status, body) = json(r);
        if expected == LENIENT {
            assert!(status == 200 || (400..500).contains(&status), "{what}: {status} {body}");
        } else {
            assert_eq!(status, expected, "{what}: {body}");
        }
        if status != 200 {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{what}: the error names no problem: {body}");
        }
    }
    let r = server.client().post(server.url("/v1/classify")).body(png).send().unwrap();
    assert_eq!(json(r).0, 415, "no content type");
    assert_eq!(json(server.get("/health")).0, 200);
}

/// Sends `head` on a raw connection, then waits for the server to answer or hang up.
fn raw_exchange(server: &Server, head: &[u8]) -> (String, Duration) {
    let mut stream = TcpStream::connect(server.addresses()[0]).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    stream.write_all(head).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

/// A client that waits for `100 Continue` before sending a body over the limit gets its 413 at
/// once, and no invitation to send the body.
#[test]
fn an_oversized_body_announced_with_expect_gets_413_at_once() {
    let server = &server();
    let mut stream = TcpStream::connect(server.addresses()[0]).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--max-body-bytes"), "{answer}");
}

#[test]
fn slow_clients_are_cut_off() {
    let server = &server();
    // Headers that never finish: the connection is closed after --header-timeout.
    let (answer, took) =
        raw_exchange(server, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n");
    assert!(took < Duration::from_secs(5), "a slow header held the connection for {took:?}: {answer}");
    assert!(!answer.contains(" 200 "), "{answer}");

    // A body that never arrives: 408 after --request-timeout, as JSON.
    let head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n\x89PNG";
    let (answer, took) = raw_exchange(server, head);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"code\":\"request_timeout\"") && answer.contains("--request-timeout"),
        "{answer}"
    );
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(10), "took {took:?}");

    assert_eq!(json(server.get("/health")).0, 200);
}
