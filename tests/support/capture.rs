//! The logs of the test process, captured as JSON lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A tracing writer that keeps everything written to it.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Install a JSON subscriber at DEBUG writing here, once per test binary; what it captures
    /// (the logs of every test of the binary that runs meanwhile).
    pub fn install() -> Self {
        static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = Capture::default();
                let _ = tracing_subscriber::fmt()
                    .json()
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(capture.clone())
                    .try_init();
                capture
            })
            .clone()
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
