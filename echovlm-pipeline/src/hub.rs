//! Checkpoints named by a Hugging Face Hub id (`org/name` or `org/name@revision`).
//!
//! [`HubId`] parses and recognises ids (always available). With the `hub` feature,
//! `download` fetches a checkpoint's files into the standard Hugging Face cache and
//! `EchoVlm::load_pretrained` loads it from there.
//!
//! The environment is read the way the Python `huggingface_hub` reads it:
//!
//! * `HF_ENDPOINT`: the hub's address (default `https://huggingface.co`);
//! * `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//!   `~/.cache/huggingface/hub`: the cache;
//! * `HF_HUB_OFFLINE=1` (or `true`, `yes`, `on`): no network; the files must be cached;
//! * `HF_TOKEN`: a bearer token for private or gated repositories.

use std::path::Path;

/// A Hugging Face Hub model id with an optional revision (branch, tag or commit).
///
/// ```
/// use echovlm_pipeline::HubId;
/// let id = HubId::parse("echovlm/EchoVLM-V1@v1.0").unwrap();
/// assert_eq!((id.repo.as_str(), id.revision.as_str()), ("echovlm/EchoVLM-V1", "v1.0"));
/// assert_eq!(HubId::parse("echovlm/EchoVLM-V1").unwrap().revision, "main");
/// assert!(HubId::parse("../weights").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// The revision; `main` when the id names none.
    pub revision: String,
}

/// An `org` or `name` part: letters, digits, `-`, `_` and `.`, not starting or ending with
/// `-` or `.`, no `..`, at most 96 characters (the hub's own rules).
fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("..")
}

/// A revision: a branch, tag or commit; branches may hold `/` (`refs/pr/5`), but no part may
/// be empty, `.` or `..`.
fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

impl HubId {
    /// Parses `org/name` or `org/name@revision`; `None` when `s` has another shape.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (s, None),
        };
        let (org, name) = repo.split_once('/')?;
        if !valid_part(org) || !valid_part(name) {
            return None;
        }
        let revision = match revision {
            Some(r) if valid_revision(r) => r.to_string(),
            Some(_) => return None,
            None => "main".to_string(),
        };
        Some(Self {
            repo: repo.to_string(),
            revision,
        })
    }

    /// A hub id for `s` when `s` is not an existing local path and has the shape
    /// `org/name[@revision]`; `None` otherwise (a local directory, say).
    pub fn from_model_arg(s: &str) -> Option<Self> {
        if Path::new(s).exists() {
            return None;
        }
        Self::parse(s)
    }

    /// The `org--name` folder of this repository in the Hugging Face cache.
    #[cfg(feature = "hub")]
    fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.revision == "main" {
            write!(f, "{}", self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

#[cfg(feature = "hub")]
pub use download::{cache_dir, download, is_offline};

#[cfg(feature = "hub")]
mod download {
    use std::collections::BTreeSet;
    use std::path::{Component, Path, PathBuf};

    use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
    use hf_hub::{Cache, Repo, RepoType};

    use super::HubId;
    use crate::error::EchoError;

    /// Files every checkpoint needs.
    const REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "tokenizer_config.json"];
    /// Files used when the repository has them.
    const OPTIONAL: [&str; 4] = [
        "generation_config.json",
        "preprocessor_config.json",
        "chat_template.json",
        "chat_template.jinja",
    ];
    const SINGLE: &str = "model.safetensors";
    const INDEX: &str = "model.safetensors.index.json";

    fn env(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// Whether `HF_HUB_OFFLINE` asks for no network (`1`, `true`, `yes` or `on`).
    pub fn is_offline() -> bool {
        env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
    }

    /// The Hugging Face cache directory (`.../huggingface/hub`) the environment names:
    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `$HOME/.cache/huggingface/hub`.
    pub fn cache_dir() -> Result<PathBuf, EchoError> {
        if let Some(c) = env("HF_HUB_CACHE") {
            return Ok(c.into());
        }
        if let Some(h) = env("HF_HOME") {
            return Ok(PathBuf::from(h).join("hub"));
        }
        if let Some(x) = env("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(x).join("huggingface/hub"));
        }
        if let Some(h) = env("HOME") {
            return Ok(PathBuf::from(h).join(".cache/huggingface/hub"));
        }
        Err(EchoError::Hub {
            id: String::new(),
            message: "no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE".into(),
        })
    }

    fn hub_err(id: &HubId, message: impl Into<String>) -> EchoError {
        EchoError::Hub {
            id: id.to_string(),
            message: message.into(),
        }
    }

    /// A file name from the repository (an index's shard) that stays inside the snapshot.
    fn plain_name(name: &str) -> bool {
        !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
    }

    /// The shard names an index lists, sorted and without repeats.
    fn shards(id: &HubId, index: &Path) -> Result<Vec<String>, EchoError> {
        let text = std::fs::read_to_string(index)
            .map_err(|e| hub_err(id, format!("reading {}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| hub_err(id, format!("{INDEX} is not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| hub_err(id, format!("{INDEX} has no \"weight_map\" object")))?;
        let mut names = BTreeSet::new();
        for file in map.values() {
            let name = file
                .as_str()
                .filter(|n| plain_name(n))
                .ok_or_else(|| hub_err(id, format!("{INDEX} names a bad shard: {file}")))?;
            names.insert(name.to_string());
        }
        Ok(names.into_iter().collect())
    }

    /// The cached snapshot of `id` when it holds every file a checkpoint needs.
    fn cached_snapshot(id: &HubId, cache: &Path) -> Option<PathBuf> {
        let repo_dir = cache.join(id.cache_folder());
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(&id.revision))
            .map(|c| c.trim().to_string())
            .ok()
            .or_else(|| {
                let is_commit =
                    id.revision.len() == 40 && id.revision.bytes().all(|b| b.is_ascii_hexdigit());
                is_commit.then(|| id.revision.clone())
            })?;
        let snap = repo_dir.join("snapshots").join(commit);
        if !REQUIRED.iter().all(|f| snap.join(f).is_file()) {
            return None;
        }
        if snap.join(SINGLE).is_file() {
            return Some(snap);
        }
        let names = shards(id, &snap.join(INDEX)).ok()?;
        names.iter().all(|n| snap.join(n).is_file()).then_some(snap)
    }

    /// Whether the hub answered 401 or 404: the repository or revision does not exist (the hub
    /// answers 401 for repositories that do not exist or are not visible without a token).
    fn not_found(e: &ApiError) -> Option<u16> {
        match e {
            ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::Status(code @ (401 | 403 | 404), _) => Some(*code),
                _ => None,
            },
            _ => None,
        }
    }

    fn fetch(id: &HubId, repo: &ApiRepo, snap: &Path, name: &str) -> Result<PathBuf, EchoError> {
        let local = snap.join(name);
        if local.is_file() {
            return Ok(local);
        }
        let path = repo.download(name).map_err(|e| match not_found(&e) {
            Some(code) => hub_err(id, format!("downloading {name}: HTTP {code}")),
            None => hub_err(id, format!("downloading {name}: {e}")),
        })?;
        if path != local {
            return Err(hub_err(
                id,
                format!(
                    "{name} came from another commit than the rest ({}); the revision moved \
                     during the download, try again",
                    path.display()
                ),
            ));
        }
        Ok(path)
    }

    /// Downloads (or finds in the cache) the files of checkpoint `id` and returns the cache
    /// snapshot directory that holds them, ready for [`EchoVlm::load`](crate::EchoVlm::load):
    /// `config.json`, `tokenizer.json`, `tokenizer_config.json`, the optional
    /// `generation_config.json`, `preprocessor_config.json` and `chat_template.json`/`.jinja`
    /// when the repository has them, and `model.safetensors` or
    /// `model.safetensors.index.json` with every shard it lists.
    ///
    /// Files already in the snapshot of the revision's current commit are not downloaded
    /// again. With `HF_HUB_OFFLINE` set, nothing is fetched and a checkpoint that is not
    /// completely cached is [`EchoError::HubOffline`]. A repository or revision the hub does
    /// not know is [`EchoError::HubNotFound`]; when the hub cannot be reached, a complete
    /// cached snapshot is used instead.
    pub fn download(id: &HubId) -> Result<PathBuf, EchoError> {
        let cache = cache_dir().map_err(|_| {
            hub_err(
                id,
                "no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE",
            )
        })?;
        if is_offline() {
            return cached_snapshot(id, &cache).ok_or_else(|| EchoError::HubOffline {
                id: id.to_string(),
                cache: cache.clone(),
            });
        }
        let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
            .with_progress(true)
            .with_retries(2)
            .with_user_agent("echovlm", env!("CARGO_PKG_VERSION"));
        if let Some(endpoint) = env("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        if let Some(token) = env("HF_TOKEN") {
            builder = builder.with_token(Some(token));
        }
        let api = builder.build().map_err(|e| hub_err(id, e.to_string()))?;
        let repo = api.repo(Repo::with_revision(
            id.repo.clone(),
            RepoType::Model,
            id.revision.clone(),
        ));
        let info = match repo.info() {
            Ok(info) => info,
            Err(e) => {
                if let Some(code) = not_found(&e) {
                    return Err(EchoError::HubNotFound {
                        id: id.to_string(),
                        status: code,
                    });
                }
                // the hub is unreachable: a complete cached copy will do
                if let Some(snap) = cached_snapshot(id, &cache) {
                    eprintln!(
                        "warning: the hub is unreachable ({e}); using the cached {}",
                        snap.display()
                    );
                    return Ok(snap);
                }
                return Err(hub_err(id, format!("asking the hub about the model: {e}")));
            }
        };
        if info.sha.is_empty() || !plain_name(&info.sha) {
            return Err(hub_err(
                id,
                "the hub named no valid commit for the revision",
            ));
        }
        let files: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let snap = cache
            .join(id.cache_folder())
            .join("snapshots")
            .join(&info.sha);
        for name in REQUIRED {
            if !files.contains(name) {
                return Err(hub_err(id, format!("the repository has no {name}")));
            }
            fetch(id, &repo, &snap, name)?;
        }
        for name in OPTIONAL.into_iter().filter(|n| files.contains(n)) {
            fetch(id, &repo, &snap, name)?;
        }
        if files.contains(SINGLE) {
            fetch(id, &repo, &snap, SINGLE)?;
        } else if files.contains(INDEX) {
            let index = fetch(id, &repo, &snap, INDEX)?;
            for shard in shards(id, &index)? {
                if !files.contains(shard.as_str()) {
                    return Err(hub_err(
                        id,
                        format!("{INDEX} lists {shard}, which the repository does not have"),
                    ));
                }
                fetch(id, &repo, &snap, &shard)?;
            }
        } else {
            return Err(hub_err(
                id,
                format!("the repository has neither {SINGLE} nor {INDEX}"),
            ));
        }
        // the revision now names this commit, also when every file was cached already
        if id.revision != info.sha {
            Cache::new(cache.clone())
                .repo(Repo::with_revision(
                    id.repo.clone(),
                    RepoType::Model,
                    id.revision.clone(),
                ))
                .create_ref(&info.sha)
                .map_err(|e| hub_err(id, format!("writing the cache reference: {e}")))?;
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::HubId;

    #[test]
    fn ids_parse_and_others_do_not() {
        let id = HubId::parse("org/name").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("org/name", "main")
        );
        let id = HubId::parse("my-org/Echo.VLM_v2@refs/pr/5").unwrap();
        assert_eq!(id.revision, "refs/pr/5");
        assert_eq!(id.to_string(), "my-org/Echo.VLM_v2@refs/pr/5");
        for bad in [
            "",
            "name",
            "/abs/path",
            "a/b/c",
            "./a",
            "../a/b",
            "org/",
            "/name",
            "org/name@",
            "org/name@../x",
            "org/na me",
            "org/.hidden",
            "org/a..b",
            "-org/name",
            "C:\\models\\x",
        ] {
            assert!(HubId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_existing_path_is_not_an_id() {
        // tests run in the crate directory, where `src/hub.rs` exists
        assert!(HubId::parse("src/hub.rs").is_some());
        assert!(HubId::from_model_arg("src/hub.rs").is_none());
        assert!(HubId::from_model_arg("no-such-org/no-such-model").is_some());
    }
}
