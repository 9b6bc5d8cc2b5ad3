//! Path handling for manifests: relative paths resolve against the manifest's folder, lexically (no symlink
//! resolution, so a path keeps its meaning when the project folder moves).

use std::path::{Component, Path, PathBuf};

/// `path` joined to `base` when relative, then `.` and `..` removed lexically.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    normalize(&joined)
}

/// Removes `.` components and folds `..` into the preceding component, without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let popped = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if popped {
                    out.pop();
                } else if !matches!(out.components().next_back(), Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The folder a manifest's relative paths are resolved against: its parent, made absolute.
pub fn manifest_dir(manifest: &Path) -> PathBuf {
    let parent = manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let absolute = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    normalize(&absolute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_the_base_and_fold_parent_components() {
        let base = Path::new("/project/experiments/manifests");
        assert_eq!(
            resolve(base, Path::new("../data/x.csv")),
            PathBuf::from("/project/experiments/data/x.csv")
        );
        assert_eq!(
            resolve(base, Path::new("/abs/./y")),
            PathBuf::from("/abs/y")
        );
        assert_eq!(
            resolve(base, Path::new("../../../../..")),
            PathBuf::from("/")
        );
        assert_eq!(normalize(Path::new("a/../../b")), PathBuf::from("../b"));
    }
}
