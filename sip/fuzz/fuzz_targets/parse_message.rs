//! Feeds arbitrary bytes to every entry point that sees untrusted input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::{Message, framing, parse_message, validate};

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Request(req)) = parse_message(data) {
        let _ = validate::check_request(&req);
        let _ = sip::Via::parse_all(&req.headers);
        let _ = sip::parse_contacts(&req.headers);
        // Printing then reparsing an accepted message must succeed (printing may add one
        // Content-Length line, hence the limit check).
        if req.headers.len() < sip::MAX_HEADERS {
            assert!(parse_message(&req.to_bytes()).is_ok());
        }
    }
    let _ = framing::parse_stream(data, 64 * 1024);
});
