//! The parsing half of a classification request, with no I/O and no HTTP framework: what the
//! declared media type means, how a `multipart/form-data` body splits into media, and what
//! `top_k` and timeline the query asks for. Kept apart from the server so it can be fuzzed on its own.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::FutureExt;

/// The media type of a multipart upload.
pub const MULTIPART: &str = "multipart/form-data";

/// One piece of uploaded media: its declared type and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub content_type: String,
    pub data: Bytes,
}

/// Why a request could not be parsed; the message names the problem for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError(pub String);

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RequestError {}

/// The media type without its parameters, lower-cased: `Image/PNG; q=1` is `image/png`.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// `top_k` from its raw query value: an integer in `1..=labels`; absent means
/// `default.min(labels)`.
pub fn top_k(raw: Option<&str>, labels: u32, default: u32) -> Result<u32, RequestError> {
    let Some(raw) = raw else { return Ok(default.min(labels)) };
    match raw.trim().parse::<u32>() {
        Ok(k) if (1..=labels).contains(&k) => Ok(k),
        _ => Err(RequestError(format!("top_k must be an integer from 1 to {labels}, got '{raw:.64}'"))),
    }
}

/// How a request asks for a timeline: the clip cut into consecutive windows of seconds or of
/// frames, each classified on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Segmentation {
    Seconds(f64),
    Frames(u32),
}

/// Shortest and longest window, in seconds.
pub const SEGMENT_SECONDS: std::ops::RangeInclusive<f64> = 0.5..=60.0;

/// The timeline the raw `segment` (seconds, a decimal from 0.5 to 60) and `segment_frames` (an
/// integer, 1 or more) values ask for; at most one of them may be given.
pub fn segmentation(
    segment: Option<&str>,
    segment_frames: Option<&str>,
) -> Result<Option<Segmentation>, RequestError> {
    match (segment, segment_frames) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(RequestError("give segment (seconds) or segment_frames, not both".into())),
        (Some(raw), None) => match raw.trim().parse::<f64>() {
            Ok(s) if SEGMENT_SECONDS.contains(&s) => Ok(Some(Segmentation::Seconds(s))),
            _ => Err(RequestError(format!(
                "segment must be a number of seconds from {} to {}, got '{raw:.64}'",
                SEGMENT_SECONDS.start(),
                SEGMENT_SECONDS.end()
            ))),
        },
        (None, Some(raw)) => match raw.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Some(Segmentation::Frames(n))),
            _ => {
                Err(RequestError(format!("segment_frames must be an integer of 1 or more, got '{raw:.64}'")))
            }
        },
    }
}

/// Splits an upload into media: a `multipart/form-data` body into one part per file part, in
/// order (untyped, unnamed form fields are skipped); any other body is one part of its declared
/// type.
pub fn media(content_type: &str, body: Bytes) -> Result<Vec<Part>, RequestError> {
    let kind = essence(content_type);
    if kind != MULTIPART {
        return Ok(vec![Part { content_type: kind, data: body }]);
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| RequestError(format!("multipart/form-data without a usable boundary: {e}")))?;
    // The body is already in memory, so every poll of the parser is ready at once.
    split_multipart(body, boundary)
        .now_or_never()
        .unwrap_or_else(|| Err(RequestError("the multipart parser waited on a complete body".into())))
}

async fn split_multipart(body: Bytes, boundary: String) -> Result<Vec<Part>, RequestError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(RequestError(format!("malformed multipart body: {e}"))),
        };
        let declared = field.content_type().map(|m| m.essence_str().to_ascii_lowercase());
        if declared.is_none() && field.file_name().is_none() {
            continue;
        }
        let number = parts.len() + 1;
        let data = field
            .bytes()
            .await
            .map_err(|e| RequestError(format!("malformed multipart body in part {number}: {e}")))?;
        parts
            .push(Part { content_type: declared.unwrap_or_else(|| "application/octet-stream".into()), data });
    }
    if parts.is_empty() {
        return Err(RequestError(
            "the multipart body holds no file parts (send frames as -F frame=@0.png)".into(),
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (name, ty, data) in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"").as_bytes());
            if ty.is_some() {
                out.extend_from_slice(format!("; filename=\"{name}.bin\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            if let Some(ty) = ty {
                out.extend_from_slice(format!("Content-Type: {ty}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        Bytes::from(out)
    }

    #[test]
    fn a_timeline_is_seconds_or_frames_within_bounds() {
        assert_eq!(segmentation(None, None), Ok(None));
        assert_eq!(segmentation(Some("2"), None), Ok(Some(Segmentation::Seconds(2.0))));
        assert_eq!(segmentation(Some("0.5"), None), Ok(Some(Segmentation::Seconds(0.5))));
        assert_eq!(segmentation(None, Some("16")), Ok(Some(Segmentation::Frames(16))));
        for bad in ["0.4", "60.5", "NaN", "inf", "two", ""] {
            let e = segmentation(Some(bad), None).unwrap_err();
            assert!(e.0.contains("0.5 to 60"), "{bad}: {e}");
        }
        for bad in ["0", "-1", "1.5", "x"] {
            assert!(segmentation(None, Some(bad)).unwrap_err().0.contains("segment_frames"), "{bad}");
        }
        assert!(segmentation(Some("2"), Some("8")).unwrap_err().0.contains("not both"));
    }

    #[test]
    fn essence_drops_parameters_and_case() {
        assert_eq!(essence("Image/PNG; q=1"), "image/png");
        assert_eq!(essence(""), "");
    }

    #[test]
    fn top_k_defaults_and_bounds() {
        assert_eq!(top_k(None, 16, 3), Ok(3));
        assert_eq!(top_k(None, 2, 3), Ok(2));
        assert_eq!(top_k(Some(" 16 "), 16, 3), Ok(16));
        for bad in ["0", "17", "-1", "three", ""] {
            let e = top_k(Some(bad), 16, 3).unwrap_err();
            assert!(e.0.contains("from 1 to 16"), "{e}");
        }
    }

    #[test]
    fn a_plain_body_is_one_part() {
        let parts = media("image/GIF", Bytes::from_static(b"GIF89a")).unwrap();
        assert_eq!(
            parts,
            vec![Part { content_type: "image/gif".into(), data: Bytes::from_static(b"GIF89a") }]
        );
    }

    #[test]
    fn file_parts_come_in_order_and_form_fields_are_skipped() {
        let b = body(&[
            ("a", Some("image/png"), b"one"),
            ("note", None, b"hi"),
            ("b", Some("Image/JPEG"), b"two"),
        ]);
        let parts = media(CT, b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].content_type.as_str(), &parts[0].data[..]), ("image/png", &b"one"[..]));
        assert_eq!((parts[1].content_type.as_str(), &parts[1].data[..]), ("image/jpeg", &b"two"[..]));
    }

    #[test]
    fn malformed_multipart_is_named() {
        let no_boundary = media("multipart/form-data", Bytes::new()).unwrap_err();
        assert!(no_boundary.0.contains("boundary"), "{no_boundary}");
        let truncated = media(CT, Bytes::from_static(b"--XyZ\r\nContent-Disposition: form-da")).unwrap_err();
        assert!(truncated.0.contains("malformed multipart"), "{truncated}");
        let empty = media(CT, body(&[("note", None, b"hi")])).unwrap_err();
        assert!(empty.0.contains("no file parts"), "{empty}");
    }
}
