//! The toolkit component: the `motion:guest` classifier the host runs, built on
//! motion-guest-sdk, around the `motion:toolkit/policy` (`wit/toolkit/toolkit.wit`) of a guest
//! written in any language. A guest's build composes the two (`wasm-tools compose toolkit.wasm
//! -d guest.wasm`), so the host sees one component.
//!
//! The upload arrives here from the host, once, and never crosses into the guest: the toolkit
//! decodes it, asks the guest which frames feed the model, preprocesses them, runs the model
//! through wasi:nn, and asks the guest to rank each row's logits. The guest's code runs for
//! three small calls a request (`describe`, `frames`, `rank`), whatever the size of the clip.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::collections::HashMap;

    use motion_guest_sdk::decode::Limits;
    use motion_guest_sdk::preprocess::{FRAMES, SIZE, distinct};
    use motion_guest_sdk::{
        Classification, Clip, Error, GuestInfo, LabelScore, Model, Plan, Request, Segment,
    };

    wit_bindgen::generate!({
        world: "toolkit",
        path: "../wit/toolkit",
        with: {
            "motion:guest/types@0.2.0": motion_guest_sdk::bindings::motion::guest::types,
            "wasi:nn/tensor@0.2.0-rc-2024-10-28": motion_guest_sdk::bindings::wasi::nn::tensor,
            "wasi:nn/errors@0.2.0-rc-2024-10-28": motion_guest_sdk::bindings::wasi::nn::errors,
            "wasi:nn/inference@0.2.0-rc-2024-10-28": motion_guest_sdk::bindings::wasi::nn::inference,
            "wasi:nn/graph@0.2.0-rc-2024-10-28": motion_guest_sdk::bindings::wasi::nn::graph,
        },
    });

    use motion::toolkit::policy;

    struct Toolkit;

    impl exports::motion::guest::classifier::Guest for Toolkit {
        fn info() -> GuestInfo {
            let about = policy::describe();
            GuestInfo {
                name: about.name,
                version: about.version,
                model: about.model,
                input_shape: vec![-1, FRAMES as i64, i64::from(SIZE), i64::from(SIZE)],
                labels: about.labels,
                accepts: about.accepts,
            }
        }

        fn classify(req: Request) -> Result<Classification, Error> {
            let limits = Limits::default();
            let media = motion_guest_sdk::media(&req);
            let clip = Clip::open(&media, &limits)?;
            // The timeline's windows (none unless asked for); the frames are the guest's choice.
            let plan = Plan::new(&req, &clip)?;
            let mut choices = Choices::default();
            let frames = choices.frames(clip.frame_count())?;
            let mut indices = frames.clone();
            for window in &plan.windows {
                indices.extend(choices.frames(window.end - window.start)?.iter().map(|i| window.start + i));
            }
            let input = clip.planes(&indices, &limits)?;
            let model = policy::describe().model;
            let rows = Model::load(&model)?.run_rows(&input)?;
            let mut ranked = policy::rank(&rows, req.top_k).map_err(Error::Inference)?.into_iter();
            if ranked.len() != rows.len() {
                return Err(Error::Inference(format!(
                    "the guest's rank answered {} rows of {}",
                    ranked.len(),
                    rows.len()
                )));
            }
            let (label, score, top_k) = best(ranked.next())?;
            let segments = plan
                .windows
                .iter()
                .zip(ranked)
                .map(|(window, top)| {
                    let (label, score, top_k) = best(Some(top))?;
                    Ok(Segment {
                        start_frame: count(window.start),
                        end_frame: count(window.end),
                        start_s: window.start_s,
                        end_s: window.end_s,
                        label,
                        score,
                        top_k,
                    })
                })
                .collect::<Result<_, Error>>()?;
            Ok(Classification {
                label,
                score,
                top_k,
                frames_total: count(clip.frame_count()),
                frames_used: count(distinct(&frames).len()),
                segments,
            })
        }
    }

    /// The guest's choice of frames, asked once per length of run: a timeline's windows are
    /// mostly of one length.
    #[derive(Default)]
    struct Choices(HashMap<usize, Vec<usize>>);

    impl Choices {
        fn frames(&mut self, frame_count: usize) -> Result<Vec<usize>, Error> {
            if let Some(frames) = self.0.get(&frame_count) {
                return Ok(frames.clone());
            }
            let chosen = policy::frames(count(frame_count));
            if chosen.len() != FRAMES || chosen.iter().any(|&i| i as usize >= frame_count) {
                return Err(Error::Inference(format!(
                    "the guest's frames({frame_count}) chose {chosen:?}; the model takes {FRAMES} frames, each \
                     below {frame_count}"
                )));
            }
            let frames: Vec<usize> = chosen.into_iter().map(|i| i as usize).collect();
            self.0.insert(frame_count, frames.clone());
            Ok(frames)
        }
    }

    /// One row's ranking as the world has it: the best label, its score, and the whole list.
    fn best(top: Option<Vec<policy::LabelScore>>) -> Result<(String, f32, Vec<LabelScore>), Error> {
        let top: Vec<LabelScore> = top
            .unwrap_or_default()
            .into_iter()
            .map(|s| LabelScore { label: s.label, score: s.score })
            .collect();
        let first =
            top.first().ok_or_else(|| Error::Inference("the guest's rank gave a row no labels".into()))?;
        Ok((first.label.clone(), first.score, top))
    }

    fn count(n: usize) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    export!(Toolkit);
}
