//! The few flags a worker that joins over the network, or a host agent, takes on
//! its command line (`--name VALUE` or `--name=VALUE`), read the same way by both.
//! A leaf.

/// The next argument: its name (without an `=VALUE`), and how to get its value.
pub(crate) fn next_flag(args: &mut impl Iterator<Item = String>) -> Option<(String, Value)> {
    let arg = args.next()?;
    let (name, inline) = match arg.split_once('=') {
        Some((name, value)) if name.starts_with("--") => {
            (name.to_string(), Some(value.to_string()))
        }
        _ => (arg, None),
    };
    Some((name.clone(), Value { name, inline }))
}

/// Whether an argument is a flag (`--name`), not a value.
fn is_flag(arg: &str) -> bool {
    arg.starts_with("--")
}

/// The value of a flag, if it takes one.
pub(crate) struct Value {
    name: String,
    inline: Option<String>,
}

impl Value {
    /// After `=`, or the next argument unless that is a flag itself (`--connect
    /// --token-file F` lacks the address; it does not connect to `--token-file`);
    /// else "NAME needs WHAT".
    pub fn get(
        &mut self,
        args: &mut impl Iterator<Item = String>,
        what: &str,
    ) -> Result<String, String> {
        match self.inline.take().or_else(|| args.next()) {
            Some(v) if is_flag(&v) => {
                Err(format!("{} needs {what}, not the flag `{v}`", self.name))
            }
            Some(v) => Ok(v),
            None => Err(format!("{} needs {what}", self.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_inline_or_next_and_their_absence_is_named() {
        let mut args = ["--a=1", "--b", "2", "plain", "--c"]
            .into_iter()
            .map(String::from);
        let (name, mut v) = next_flag(&mut args).unwrap();
        assert_eq!(
            (name.as_str(), v.get(&mut args, "x")),
            ("--a", Ok("1".into()))
        );
        let (name, mut v) = next_flag(&mut args).unwrap();
        assert_eq!(
            (name.as_str(), v.get(&mut args, "x")),
            ("--b", Ok("2".into()))
        );
        assert_eq!(next_flag(&mut args).unwrap().0, "plain");
        let (_, mut v) = next_flag(&mut args).unwrap();
        assert_eq!(
            v.get(&mut args, "a number"),
            Err("--c needs a number".into())
        );
        assert!(next_flag(&mut args).is_none());
    }
}
