//! Connection-string checking and redaction on arbitrary text: never a panic, and no message
//! the programs log about a refused string shows its password (or user name), raw or
//! percent-decoded, outside the `<redacted>` marks.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sensehat_monitor::mongo::check_uri;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

/// The secrets of `uri` worth checking for: the user information's pieces of at least three
/// characters (shorter ones would match ordinary words), raw and percent-decoded.
fn secrets(uri: &str) -> Vec<String> {
    let Some((_, rest)) = uri.split_once("://") else {
        return Vec::new();
    };
    let Some(at) = rest.rfind('@') else {
        return Vec::new();
    };
    let userinfo = &rest[..at];
    let mut out = Vec::new();
    for piece in userinfo.split(':') {
        out.push(piece.to_owned());
        out.push(percent_decode(piece));
    }
    out.retain(|s| s.chars().count() >= 3);
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Ok(tail) = std::str::from_utf8(data) else {
        return;
    };
    for scheme in ["mongodb://", "mongodb+srv://"] {
        let uri = format!("{scheme}{tail}");
        let Err(message) = runtime().block_on(check_uri(&uri)) else {
            continue;
        };
        // What the message may show anyway: the string's part after the user information
        // (hosts and options), and the hints' own words.
        let public = uri.rsplit_once('@').map_or("", |(_, h)| h);
        // Compared without case (the driver may quote a piece lower-cased), in each stretch of
        // text between two marks: a mark itself shows nothing.
        let shown: Vec<String> = message.split("<redacted>").map(str::to_lowercase).collect();
        let public = public.to_lowercase();
        let hints = HINTS.to_lowercase();
        for secret in secrets(&uri) {
            let secret = secret.to_lowercase();
            if public.contains(&secret) || hints.contains(&secret) {
                continue;
            }
            assert!(
                !shown.iter().any(|part| part.contains(&secret)),
                "{uri:?} -> {message:?} shows {secret:?}"
            );
        }
    }
});

/// Words of the programs' own hints about connection strings, and of the driver's messages: a
/// secret that is one of these words is not shown by them.
const HINTS: &str = "invalid MongoDB connection string or option: a user name or password with any of : / ? # [ ] @ % must have them percent-encoded (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25); it should look like mongodb+srv://USER:PASSWORD@cluster0.example.mongodb.net/ (Atlas) or mongodb://HOST:27017/; every % must start a percent-encoded character (%XX); write % itself as %25; connection string option is not a 'key=value' pair; is an invalid option; username must be URL encoded; password must be URL encoded; cannot contain unescaped %; invalid port; missing hosts";
