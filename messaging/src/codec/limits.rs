//! Bounds on what a peer can make a decoder do, and on the fields it controls.
//!
//! Anyone who can publish on the bus can send any bytes, so decoding and every field used
//! afterwards are bounded here: how many values a body may decode into (so a decoded message
//! costs a small multiple of its size, whatever its shape), and how long ids, queue names,
//! method names and the context may be. The numbers are far above what oslo.messaging sends
//! (32-hex ids, `reply_<32 hex>` queues, contexts of a few dozen keys).

use super::error::CodecError;

/// Values (each array item, map value and map key counts as one) a body may decode into
/// beyond one per two bytes of it. Decoded JSON values cost about 32 bytes each, so a body
/// decodes into at most about sixteen times its size plus this allowance.
pub const ITEM_ALLOWANCE: usize = 4096;

/// Longest `_msg_id` or `_unique_id` accepted (oslo sends 32 hex digits).
pub const MAX_ID_LEN: usize = 255;
/// Longest `_reply_q`: an AMQP queue name (a short string) holds at most 255 bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 255;
/// Longest method or namespace name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// Longest version string accepted (`"1.3"`; oslo's are a few characters).
pub const MAX_VERSION_LEN: usize = 32;
/// Most context keys accepted (OpenStack's contexts carry a few dozen).
pub const MAX_CONTEXT_KEYS: usize = 1024;
/// Longest context key accepted.
pub const MAX_CONTEXT_KEY_LEN: usize = 255;
/// Longest call-monitor `_timeout` honoured, in seconds (a year): keepalives every half of it.
pub const MAX_CALL_MONITOR_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// Characters of a peer's string kept when it is copied into a log line or an error.
pub const LOGGED_CHARS: usize = 128;

/// How many values a body of `len` bytes may decode into.
pub fn item_budget(len: usize) -> usize {
    len / 2 + ITEM_ALLOWANCE
}

/// Counts the values a JSON text would decode into, without decoding it, and fails once the
/// count passes `budget`. Every value is preceded by `[`, `{`, `,` or `:` outside strings, or
/// is the first value, so counting those bounds the values from above.
pub(crate) fn check_json_items(text: &[u8], budget: usize) -> Result<(), CodecError> {
    // Counting those bytes everywhere, strings included, bounds the count from above, and
    // that count is one branch-free pass: the string-aware scan below runs only for text that
    // might be over its budget.
    if item_bytes_anywhere(text) < budget {
        return Ok(());
    }
    let mut items: usize = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => {
                items += 1;
                if items > budget {
                    return Err(too_many_items(budget));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// How many bytes of `text` are `[`, `{`, `,` or `:`, strings included. Counted a chunk at a
/// time in a byte-wide total, which the compiler turns into vector compares (16 bytes a step
/// and more); a word-wide total stays a byte at a time, about 1 ms per MiB here, and this
/// count runs twice on every oslo JSON message received.
fn item_bytes_anywhere(text: &[u8]) -> usize {
    text.chunks(usize::from(u8::MAX))
        .map(|chunk| {
            let in_chunk = chunk.iter().fold(0u8, |count, &b| {
                count.wrapping_add(u8::from(matches!(b, b'[' | b'{' | b',' | b':')))
            });
            usize::from(in_chunk)
        })
        .sum()
}

/// The error of a body that would decode into more values than its budget.
pub(crate) fn too_many_items(budget: usize) -> CodecError {
    CodecError::TooComplex { budget }
}

/// Checks a string field a peer controls: its length, and no control characters (which have
/// no place in ids, names or queue names and would garble logs).
pub(crate) fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), CodecError> {
    if value.len() > max {
        return Err(CodecError::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(CodecError::InvalidField {
            field,
            reason: "holds control characters",
        });
    }
    Ok(())
}

/// At most [`LOGGED_CHARS`] characters of `text`, marked when cut: what a peer's string may
/// occupy in a log line or an error message.
pub fn truncate_for_log(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(LOGGED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => {
            std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_items_are_counted_outside_strings_only() {
        // The object, two keys, the string, the array and its two numbers: 7 values.
        assert!(check_json_items(br#"{"a": "[[[,,,]]]", "b": [1, 2]}"#, 7).is_ok());
        assert!(check_json_items(br#"{"a": "[[[,,,]]]", "b": [1, 2]}"#, 6).is_err());
        assert_eq!(
            check_json_items(br#"[0,0,0,0,0,0,0,0]"#, 5),
            Err(CodecError::TooComplex { budget: 5 })
        );
        assert!(check_json_items(br#""\"[,,,,,,]""#, 1).is_ok());
        // Within budget counting strings too (the quick pass), and just over it.
        assert!(check_json_items(br#"[0,0]"#, 4).is_ok());
        assert!(check_json_items(br#"[0,0]"#, 2).is_err());
    }

    #[test]
    fn item_bytes_are_counted_across_chunks_of_any_length() {
        for len in [0, 1, 254, 255, 256, 510, 511, 4096, 70_000] {
            let text: Vec<u8> = (0..len).map(|i| b"x[y{,:\"z"[i % 8]).collect();
            let expected = text
                .iter()
                .filter(|&&b| matches!(b, b'[' | b'{' | b',' | b':'))
                .count();
            assert_eq!(item_bytes_anywhere(&text), expected, "{len} bytes");
        }
        // A chunk made only of counted bytes must not wrap its byte-wide total.
        assert_eq!(item_bytes_anywhere(&[b','; 1000]), 1000);
    }

    #[test]
    fn names_are_checked_for_length_and_control_characters() {
        assert!(check_name("_reply_q", "reply_0123", MAX_QUEUE_NAME_LEN).is_ok());
        assert!(matches!(
            check_name("_reply_q", &"q".repeat(256), MAX_QUEUE_NAME_LEN),
            Err(CodecError::FieldTooLong { len: 256, .. })
        ));
        assert!(matches!(
            check_name("method", "a\nb", MAX_NAME_LEN),
            Err(CodecError::InvalidField { .. })
        ));
    }

    #[test]
    fn long_strings_are_cut_for_logs() {
        assert_eq!(truncate_for_log("short"), "short");
        let long = "é".repeat(1000);
        let cut = truncate_for_log(&long);
        assert!(cut.chars().count() < 200, "{cut}");
        assert!(cut.ends_with("(2000 bytes in all)"), "{cut}");
    }
}
