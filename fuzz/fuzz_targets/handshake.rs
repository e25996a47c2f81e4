//! The coordinator's side of the handshake on arbitrary bytes: the first frame of a
//! connection must be a Hello of our version within the Hello limit, the second a
//! Join whose proof checks out; anything else is refused with a reason, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pstream_protocol::auth::{Role, Token};
use pstream_protocol::{read_frame, DecodeError, Message, PROTOCOL_VERSION};

const MAX_HELLO: usize = 1 << 20;

fn judge(mut bytes: &[u8]) -> Result<(), String> {
    let frame = match read_frame(&mut bytes, MAX_HELLO) {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err("closed before Hello".into()),
        Err(e @ DecodeError::Version { .. }) => return Err(e.to_string()),
        Err(e) => return Err(format!("no valid Hello: {e}")),
    };
    let Message::Hello(hello) = frame.message else {
        return Err("expected Hello".into());
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!("version {}", hello.protocol_version));
    }
    let join = match read_frame(&mut bytes, MAX_HELLO) {
        Ok(Some(frame)) => match frame.message {
            Message::Join(join) => join,
            _ => return Err("expected Join".into()),
        },
        Ok(None) => return Err("closed before Join".into()),
        Err(e) => return Err(format!("no valid Join: {e}")),
    };
    let token = Token::from_hex(&"5a".repeat(32)).expect("a valid token");
    if !token.verify(Role::Worker, &hello.nonce, &[0; 32], &join.proof) {
        return Err("a wrong proof".into());
    }
    if join.functions.iter().any(|f| f.name.is_empty()) {
        return Err("a function without a name".into());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = judge(data);
});
