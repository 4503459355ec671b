//! Wakes the stream when the SQLite file or its -wal/-journal changes; the caller keeps a
//! fallback poll, since notifications can be missed (network filesystems, containers).

use std::path::Path;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};

/// Watches the directory of `db` and sends `()` (coalesced) on any change to the database or
/// its companion files. Keep the returned watcher alive as long as the receiver is used.
pub fn watch(db: &Path) -> Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&name))
            });
            if ours {
                // A full channel already holds a wake-up: nothing is lost by dropping this one.
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| {
        Error::with_source(
            ErrorKind::SourceUnreadable,
            "cannot start watching the SQLite file",
            e,
        )
    })?;
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::SourceUnreadable,
                format!("cannot watch {}", dir.display()),
                e,
            )
        })?;
    Ok((watcher, rx))
}
