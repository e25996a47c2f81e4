//! Refusing file arguments that name the same file: an output written over the
//! input (or over another output) would destroy it before it is read.
//!
//! Files are compared by what they are, not by how they are spelled: an existing
//! regular file by its device and inode (so a hard link, a symbolic link, `./x` and
//! an absolute path are all the same file), a file that does not exist yet by its
//! canonical directory and its name. Files that are not regular (`/dev/null`, a
//! terminal, a FIFO) may be named more than once: writing one does not empty
//! another.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cli::RunArgs;
use crate::error::CliError;
use crate::journal;

/// What a file argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// An existing regular file.
    File { dev: u64, ino: u64 },
    /// A file that does not exist yet: its canonical directory joined with its name.
    New(PathBuf),
    /// Anything else (a device, a FIFO, a directory, a path that cannot be
    /// inspected): never the same as another argument here; opening it says
    /// what is wrong with it.
    Other,
}

impl Identity {
    fn of_metadata(m: &Metadata) -> Identity {
        if m.is_file() {
            Identity::File {
                dev: m.dev(),
                ino: m.ino(),
            }
        } else {
            Identity::Other
        }
    }

    fn of_path(path: &Path) -> Identity {
        match fs::metadata(path) {
            Ok(m) => Identity::of_metadata(&m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match new_path(path) {
                Some(p) => Identity::New(p),
                None => Identity::Other,
            },
            Err(_) => Identity::Other,
        }
    }

    fn of_fd(file: &File) -> Identity {
        file.metadata()
            .map(|m| Identity::of_metadata(&m))
            .unwrap_or(Identity::Other)
    }

    fn clashes_with(&self, other: &Identity) -> bool {
        *self != Identity::Other && self == other
    }
}

/// Where a file that does not exist yet will be created: dangling symbolic links
/// followed, the directory made canonical. `None` if that cannot be told (the
/// directory does not exist either: creating the file will fail).
fn new_path(path: &Path) -> Option<PathBuf> {
    let mut path = path.to_path_buf();
    // A dangling symbolic link: creating it creates its target.
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&path).ok()?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => break,
        }
    }
    let name = path.file_name()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(dir).ok()?.join(name))
}

/// One file argument: how to name it in a message, and what it is.
#[derive(Debug)]
struct Named {
    name: String,
    identity: Identity,
}

/// Refuse (a usage error) file arguments of `args` that would write over the input
/// (`input`, already open), the token file or the hosts file, or over each other:
/// the output, the errors file, the resume journal and the statistics file.
/// Nothing has been opened for writing yet.
/// `more`: files of the subcommand's own that it writes (`exec --joblog`), each
/// named for messages.
pub fn check(args: &RunArgs, input: &File, more: &[(String, PathBuf)]) -> Result<(), CliError> {
    let input = Named {
        name: if args.input == "-" {
            "the input (stdin)".into()
        } else {
            format!("the input (--input {})", args.input)
        },
        identity: Identity::of_fd(input),
    };
    let mut written = Vec::new();
    if args.output == "-" {
        let identity = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_or(Identity::Other, |fd| Identity::of_fd(&File::from(fd)));
        written.push(Named {
            name: "the output (stdout)".into(),
            identity,
        });
    } else {
        let output = Path::new(&args.output);
        let identity = Identity::of_path(output);
        // Only a regular output file has a journal.
        let journaled = identity != Identity::Other;
        written.push(Named {
            name: format!("the output (--output {})", args.output),
            identity,
        });
        if journaled {
            let journal = journal::Journal::path_for(output);
            for path in [journal.clone(), journal::Journal::tmp_for(&journal)] {
                written.push(Named {
                    name: format!("the resume journal of --output ({})", path.display()),
                    identity: Identity::of_path(&path),
                });
            }
        }
    }
    if let Some(errors) = &args.errors {
        written.push(Named {
            name: format!("the errors file (--errors {})", errors.display()),
            identity: Identity::of_path(errors),
        });
    }
    if let Some(stats) = &args.stats_json {
        written.push(Named {
            name: format!("the statistics file (--stats-json {})", stats.display()),
            identity: Identity::of_path(stats),
        });
    }
    for (name, path) in more {
        written.push(Named {
            name: name.clone(),
            identity: Identity::of_path(path),
        });
    }
    // Files the job reads besides the input: writing one would destroy it (the
    // token that workers joining later, and the copies made from it, must prove).
    let mut read = Vec::new();
    if let Some(token) = &args.token_file {
        read.push(Named {
            name: format!("the token file (--token-file {})", token.display()),
            identity: Identity::of_path(token),
        });
    }
    if let Some(hosts) = &args.launch.ssh_hosts {
        read.push(Named {
            name: format!("the hosts file (--ssh-hosts {})", hosts.display()),
            identity: Identity::of_path(hosts),
        });
    }
    for (i, w) in written.iter().enumerate() {
        if w.identity.clashes_with(&input.identity) {
            return Err(CliError::Usage(format!(
                "{} is the same file as {}: writing it would destroy the input before \
                 it is read; name another file",
                w.name, input.name
            )));
        }
        if let Some(r) = read.iter().find(|r| r.identity.clashes_with(&w.identity)) {
            return Err(CliError::Usage(format!(
                "{} is the same file as {}: writing it would destroy what the job \
                 reads there; name another file",
                w.name, r.name
            )));
        }
        if let Some(other) = written[..i]
            .iter()
            .find(|o| o.identity.clashes_with(&w.identity))
        {
            return Err(CliError::Usage(format!(
                "{} is the same file as {}: one would overwrite the other; name \
                 different files",
                w.name, other.name
            )));
        }
    }
    Ok(())
}

/// Where `path` is, spelled canonically when that can be told (the file or, for one
/// not created yet, its directory exists); otherwise as given.
pub fn place(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .ok()
        .or_else(|| new_path(path))
        .unwrap_or_else(|| path.to_path_buf())
}
