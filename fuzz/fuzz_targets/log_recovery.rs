//! A crash can leave anything at the end of a segment: opening a log over arbitrary segment
//! bytes must recover (cut what is invalid) without panicking, and the log must then accept
//! appends and serve reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("00000000000000000000.log"), data).expect("write segment");
    let Ok((mut log, _)) =
        durable_log::Log::open(dir.path(), durable_log::LogConfig::default(), false, 0)
    else {
        return;
    };
    let end = log.log_end_offset();
    if let Ok(Some(plan)) = log.read_plan(0, 1 << 20, end, true) {
        let _ = plan.execute();
    }
    let _ = log.offset_for_timestamp(0);
});
