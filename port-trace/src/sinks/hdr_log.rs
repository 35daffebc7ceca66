//! `--hdr-log FILE`: lifetimes as HdrHistogram interval logs (the V2 log format), one
//! untagged histogram for all ports and one tagged with the protocol per interval, so
//! HdrHistogram's own tools (HistogramLogProcessor, the plotters) can read and plot them.
//! Values are nanoseconds; the max column is in milliseconds.

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::{
    Histogram,
    serialization::{
        Serializer, V2DeflateSerializer,
        interval_log::{IntervalLogWriter, IntervalLogWriterBuilder, Tag},
    },
};

use crate::{
    event::Proto,
    pipeline::{Sink, View},
    sys::output::{OutputError, OutputFile},
};

/// `--hdr-log FILE` as a sink: one interval per tick, and the last one when tracing stops.
pub struct HdrLog {
    /// Named in every error.
    path: PathBuf,
    log: IntervalLogWriter<'static, 'static, std::fs::File, V2DeflateSerializer>,
    started: Instant,
    interval_started: Instant,
}

impl HdrLog {
    /// Puts the log, prepared before anything was attached, in place at once (it is
    /// written every interval, and readers may follow it) and writes its header.
    pub fn create(output: OutputFile, started: Instant) -> Result<Self, OutputError> {
        let path = output.path().to_path_buf();
        let file = output.publish()?;
        // The log writer borrows its file and serializer for as long as it lives, which is
        // the whole trace: they are given that lifetime rather than a self-referential struct.
        let file = Box::leak(Box::new(file));
        let serializer = Box::leak(Box::new(V2DeflateSerializer::new()));
        let log =
            start(file, serializer, SystemTime::now()).map_err(|source| OutputError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            log,
            started,
            interval_started: Instant::now(),
        })
    }

    fn write(&mut self, view: &View<'_>) -> Result<(), OutputError> {
        let now = Instant::now();
        let since = self.interval_started.duration_since(self.started);
        write_interval(
            &mut self.log,
            view.interval,
            since,
            now - self.interval_started,
        )
        .map_err(|source| OutputError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.interval_started = now;
        Ok(())
    }
}

impl Sink for HdrLog {
    fn tick(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        Ok(self.write(view)?)
    }

    fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        Ok(self.write(view)?)
    }
}

pub fn start<'a, 'b, W: Write, S: Serializer>(
    out: &'a mut W,
    serializer: &'b mut S,
    started: std::time::SystemTime,
) -> std::io::Result<IntervalLogWriter<'a, 'b, W, S>> {
    IntervalLogWriterBuilder::new()
        .add_comment("port-trace allocation lifetimes, ns; untagged: all ports")
        .with_start_time(started)
        .with_base_time(started)
        .with_max_value_divisor(1e6)
        .begin_log_with(out, serializer)
}

/// Writes one interval: `since` is its start relative to the log's start.
pub fn write_interval<W: Write, S: Serializer>(
    log: &mut IntervalLogWriter<'_, '_, W, S>,
    histograms: &BTreeMap<Option<Proto>, Histogram<u64>>,
    since: Duration,
    length: Duration,
) -> std::io::Result<()> {
    for (group, histogram) in histograms {
        let tag = group.map(|p| p.to_string());
        let tag = tag.as_deref().and_then(Tag::new);
        log.write_histogram(histogram, since, length, tag)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use hdrhistogram::serialization::{
        Deserializer, V2DeflateSerializer,
        interval_log::{IntervalLogIterator, LogEntry},
    };

    use super::*;

    #[test]
    fn hdr_tools_read_back_what_was_written() {
        let mut all = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 2).expect("bounds");
        let mut tcp = all.clone();
        for v in [1_000, 2_000, 3_000] {
            all.record(v).expect("in range");
            tcp.record(v).expect("in range");
        }
        let groups = BTreeMap::from([(None, all), (Some(Proto::Tcp), tcp)]);
        let mut bytes = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        {
            let mut log =
                start(&mut bytes, &mut serializer, std::time::SystemTime::now()).expect("log");
            write_interval(&mut log, &groups, Duration::ZERO, Duration::from_secs(1))
                .expect("written");
        }
        let mut found = Vec::new();
        for entry in IntervalLogIterator::new(&bytes) {
            if let Ok(LogEntry::Interval(h)) = entry {
                let decoded = STANDARD.decode(h.encoded_histogram()).expect("base64");
                let hist: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut decoded.as_slice())
                    .expect("a histogram");
                found.push((h.tag().map(|t| t.as_str().to_string()), hist.len()));
            }
        }
        assert_eq!(found, vec![(None, 3), (Some("tcp".to_string()), 3)]);
    }
}
