//! One JSON object per event on stderr (`--log-format json`, or no terminal): run id, time,
//! event name and fields, node and step where they apply.

use super::Consumer;
use crate::vocab::Stamped;
use std::io::Write;

pub struct JsonLines {
    run_id: String,
    out: Box<dyn Write + Send>,
}

impl JsonLines {
    pub fn stderr(run_id: &str) -> Self {
        Self {
            run_id: run_id.into(),
            out: Box::new(std::io::stderr()),
        }
    }

    pub fn to_writer(run_id: &str, out: Box<dyn Write + Send>) -> Self {
        Self {
            run_id: run_id.into(),
            out,
        }
    }
}

impl Consumer for JsonLines {
    fn handle(&mut self, event: &Stamped) {
        let mut value = serde_json::to_value(event).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("run_id".into(), self.run_id.clone().into());
        }
        let _ = writeln!(self.out, "{value}");
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}
