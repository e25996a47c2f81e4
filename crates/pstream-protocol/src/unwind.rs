//! Panics turned into an item's error: [`catch`] runs user code (a function, an
//! input iterator, an encoder) and gives back the panic's message and, when the
//! hook saw it, its location.
//!
//! A process-wide hook ([`install_hook`]) records each panic's message and
//! location on the threads that asked for it ([`capture_on_this_thread`]: a
//! worker's serving thread, the thread executor's threads) and prints nothing
//! there: the panic is reported as the item's error instead. On every other
//! thread it leaves the panic to the hook that was there before. Shared by the
//! worker runtime, the coordinator's feeder and the thread executor, so there is
//! one hook and one way of reading a panic.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// A caught panic: its message, and where it happened when the hook recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    /// The panic's message ([`panic_message`] of its payload).
    pub message: String,
    /// `file:line:column`, when the hook recorded this very panic on this thread.
    pub location: Option<String>,
}

/// Run `f`; its value, or the panic it raised.
///
/// The location comes from the hook's record on this thread, if that record is of
/// this panic: one caught inside `f` leaves a record behind, and one passed on with
/// `resume_unwind` (from another thread, say) makes none, so the record is used
/// only when its message is the payload's.
#[inline(always)]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Ok(value),
        Err(payload) => Err(caught(payload)),
    }
}

#[cold]
#[inline(never)]
fn caught(payload: Box<dyn std::any::Any + Send>) -> Panic {
    let message = panic_message(&*payload);
    let location = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .filter(|(recorded, _)| *recorded == message)
        .and_then(|(_, location)| location);
    Panic { message, location }
}

/// The text of a panic's payload, as item errors carry it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked with a non-string payload".to_string()
    }
}

thread_local! {
    /// This thread's panics are recorded for [`catch`], not printed.
    static CAPTURE: Cell<bool> = const { Cell::new(false) };
    /// The message and location of the last panic recorded on this thread.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

/// From now on, this thread's panics are recorded for [`catch`] (which reports
/// them as item errors) instead of printed. Installs the hook if it is not yet.
pub fn capture_on_this_thread() {
    install_hook();
    CAPTURE.with(|c| c.set(true));
}

/// Install the hook, once per process: it records panics on the threads that
/// asked ([`capture_on_this_thread`]) and leaves every other thread's panics to
/// the hook that was there before.
pub fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURE.with(Cell::get) {
                let message = panic_message(info.payload());
                let location = info.location().map(|l| l.to_string());
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_panic_has_its_message_and_location() {
        let got = std::thread::spawn(|| {
            capture_on_this_thread();
            catch(|| -> u32 { panic!("boom {}", 7) })
        })
        .join()
        .unwrap();
        let panic = got.unwrap_err();
        assert_eq!(panic.message, "boom 7");
        let location = panic.location.expect("the hook recorded it");
        assert!(location.starts_with(file!()), "{location}");
    }

    #[test]
    fn a_value_passes_through() {
        assert_eq!(catch(|| 5), Ok(5));
    }

    #[test]
    fn a_panic_passed_on_is_named_by_its_own_payload_not_an_earlier_record() {
        let got = std::thread::spawn(|| {
            capture_on_this_thread();
            catch(|| {
                // Caught inside: leaves a record behind.
                let _ = std::panic::catch_unwind(|| panic!("inner"));
                std::panic::resume_unwind(Box::new("outer"));
            })
        })
        .join()
        .unwrap();
        assert_eq!(
            got,
            Err(Panic {
                message: "outer".into(),
                location: None
            })
        );
    }

    #[test]
    fn a_non_string_payload_is_named_as_such() {
        let got = catch(|| std::panic::panic_any(42u8));
        assert_eq!(
            got.unwrap_err().message,
            "panicked with a non-string payload"
        );
    }
}
