//! The toolkit component: `motion:toolkit/preprocess` (`wit/toolkit/toolkit.wit`) over
//! motion-guest-sdk, so a guest written in Python or JavaScript decodes and preprocesses at Rust
//! speed. A guest's build composes it in (`wasm-tools compose guest.wasm -d toolkit.wasm`), so
//! the host sees one component with the toolkit inside it, and nothing of the toolkit in its
//! own code.
//!
//! A clip keeps its own copy of the media (the guest's memory is another instance's) and reads
//! the headers again at each `planes` call, which costs microseconds against the decoding.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::Cell;

    use motion_guest_sdk::decode::{ACCEPTS, DecodeError, Limits};
    use motion_guest_sdk::{postprocess, preprocess, timeline};

    wit_bindgen::generate!({
        world: "toolkit",
        path: "../wit/toolkit",
        generate_all,
    });

    use exports::motion::toolkit::preprocess::{Error, Guest, GuestClip, Media, Segmentation, Window};

    struct Toolkit;

    /// A clip: its media, owned, and the frame count its headers gave when it was opened.
    struct Clip {
        media: Vec<Media>,
        frames: Cell<usize>,
    }

    fn error(e: DecodeError) -> Error {
        match e {
            DecodeError::Unsupported(m) => Error::UnsupportedMedia(m),
            DecodeError::Malformed(m) => Error::BadInput(m),
        }
    }

    impl Clip {
        fn open(&self) -> Result<motion_guest_sdk::Clip<'_>, Error> {
            let media: Vec<motion_guest_sdk::Media> = self
                .media
                .iter()
                .map(|m| motion_guest_sdk::Media { content_type: &m.content_type, data: &m.data })
                .collect();
            motion_guest_sdk::Clip::open(&media, &Limits::default()).map_err(error)
        }
    }

    impl GuestClip for Clip {
        fn open(media: Vec<Media>) -> Result<exports::motion::toolkit::preprocess::Clip, Error> {
            let clip = Clip { media, frames: Cell::new(0) };
            let frames = clip.open()?.frame_count();
            clip.frames.set(frames);
            Ok(exports::motion::toolkit::preprocess::Clip::new(clip))
        }

        fn frame_count(&self) -> u32 {
            u32::try_from(self.frames.get()).unwrap_or(u32::MAX)
        }

        fn planes(&self, indices: Vec<u32>) -> Result<Vec<u8>, Error> {
            let indices: Vec<usize> = indices.into_iter().map(|i| i as usize).collect();
            let values = self.open()?.planes(&indices, &Limits::default()).map_err(error)?;
            Ok(motion_guest_sdk::le_bytes(&values).to_vec())
        }

        fn windows(&self, how: Segmentation, max: u32) -> Result<Vec<Window>, Error> {
            let how = match how {
                Segmentation::Seconds(s) => timeline::Segmentation::Seconds(s),
                Segmentation::Frames(n) => timeline::Segmentation::Frames(n),
            };
            let clip = self.open()?;
            let windows = timeline::windows(clip.frame_count(), clip.timing().as_ref(), how, max as usize)
                .map_err(Error::BadRequest)?;
            Ok(windows
                .into_iter()
                .map(|w| Window {
                    start_frame: w.start as u32,
                    end_frame: w.end as u32,
                    start_s: w.start_s,
                    end_s: w.end_s,
                    sample: w.sample_indices().iter().map(|&i| i as u32).collect(),
                })
                .collect())
        }
    }

    impl Guest for Toolkit {
        type Clip = Clip;

        fn accepts() -> Vec<String> {
            ACCEPTS.iter().map(|a| a.to_string()).collect()
        }

        fn sample_indices(frame_count: u32) -> Vec<u32> {
            preprocess::sample_indices((frame_count as usize).max(1)).iter().map(|&i| i as u32).collect()
        }

        fn softmax(logits: Vec<f32>) -> Result<Vec<f32>, String> {
            postprocess::softmax(&logits)
        }

        fn top_k(scores: Vec<f32>, k: u32) -> Vec<u32> {
            postprocess::top_k(&scores, k as usize).into_iter().map(|i| i as u32).collect()
        }
    }

    export!(Toolkit);
}
