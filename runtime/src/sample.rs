//! The self-test's built-in clip: one small grey gradient frame as PNG.

/// A 64×36 grey gradient, PNG-encoded.
pub fn png() -> Vec<u8> {
    let (width, height) = (64u32, 36u32);
    let pixels: Vec<u8> =
        (0..height).flat_map(|y| (0..width).map(move |x| ((x * 4 + y * 2) % 256) as u8)).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing into a Vec cannot fail but for a size mismatch, which the dimensions rule out.
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(&pixels);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sample_is_a_png() {
        assert!(super::png().starts_with(b"\x89PNG\r\n\x1a\n"));
    }
}
