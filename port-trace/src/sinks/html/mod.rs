//! `--html FILE`: one self-contained HTML page (inline SVG and CSS, one small script, nothing
//! fetched) to look at a trace or a capture: the headline and findings, the fullest ranges'
//! occupancy over time, allocation and release rates, lifetime distributions, who holds the
//! ports, top destinations and failures.
//!
//! - `recorder`: what the page needs over time that the stats do not keep (per event O(1)).
//! - `series`: bounded time series (merged pairwise when full).
//! - `model`: the page as data, built from the pipeline's `View` and the recorder.
//! - `chart`: scales, ticks, log buckets, an SVG writer that escapes.
//! - `render`: the page model as HTML.
//!
//! A live trace rewrites the page every interval and at exit; replay writes it at the end.

pub mod chart;
pub mod model;
pub mod recorder;
pub mod render;
pub mod series;

use std::io;

use crate::{
    event::Event,
    exhaustion::warning::Warning,
    pipeline::{Sink, View},
    sys::output::OutputFile,
    track::Outcome,
};

pub use model::{Meta, Source};

/// `--html FILE`.
pub struct HtmlFile {
    /// Prepared before anything was attached; replaced whole at each write.
    output: OutputFile,
    pub meta: Meta,
    recorder: recorder::Recorder,
    /// Rewritten at every interval (a live trace), or only at the finish (replay, whose
    /// intervals pass in an instant).
    refresh: bool,
    /// An interval's page could not be written (a full disk, say): warned once, retried at
    /// the next interval; only the last page's failure ends the trace.
    failing: bool,
}

impl HtmlFile {
    pub fn new(output: OutputFile, meta: Meta, refresh: bool) -> Self {
        Self {
            output,
            meta,
            recorder: recorder::Recorder::default(),
            refresh,
            failing: false,
        }
    }

    /// The page as of `view`.
    pub fn page(&self, view: &View<'_>) -> String {
        render::render(&model::Page::new(self.meta.clone(), view, &self.recorder))
    }

    fn sample(&mut self, view: &View<'_>) {
        self.recorder.tick(
            view.exhaustion,
            view.elapsed_ns,
            (view.held, view.held_time_wait),
        );
    }
}

impl Sink for HtmlFile {
    fn event(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        self.recorder.event(event, outcome);
        Ok(())
    }

    fn warnings(&mut self, warnings: &[Warning]) -> io::Result<()> {
        self.recorder.warnings(warnings);
        Ok(())
    }

    fn tick(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        self.sample(view);
        if self.refresh {
            let page = self.page(view);
            match self.output.replace(page.as_bytes(), false) {
                Ok(()) if self.failing => {
                    self.failing = false;
                    tracing::info!("{} is written again", self.output.path().display());
                }
                Ok(()) => {}
                Err(err) if !self.failing => {
                    self.failing = true;
                    tracing::warn!("{err:#}; trying again at the next interval");
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        self.sample(view);
        let page = self.page(view);
        Ok(self.output.replace(page.as_bytes(), true)?)
    }
}

#[cfg(test)]
mod tests;
