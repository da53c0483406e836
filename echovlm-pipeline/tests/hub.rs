//! `EchoVlm::load_pretrained` against a local mock of the Hugging Face Hub serving the tiny
//! fixture checkpoints: the download equals the local directory, the cache serves offline
//! loads (with an adapter applied as over a directory), an interrupted download resumes where
//! it stopped, and offline-uncached, unknown
//! repositories and unreachable hubs give typed errors.
//!
//! The environment (`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE`) is process-wide, so every case
//! runs in order inside the one test of this binary.

mod mock_hub;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use echovlm_pipeline::{EchoError, EchoVlm, GenerationOptions, HubId, LoadOptions, Request};
use mock_hub::{MockHub, MockRepo};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const SHARDED_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/models")
        .join(name)
}

fn set(k: &str, v: impl AsRef<std::ffi::OsStr>) {
    // SAFETY: this binary has one test, so no other thread reads the environment meanwhile
    // (the mock hub's threads do not read it).
    unsafe { std::env::set_var(k, v) }
}

fn unset(k: &str) {
    // SAFETY: as in `set`.
    unsafe { std::env::remove_var(k) }
}

/// Greedy text and tokens for an image request and a text-only one.
fn answers(m: &EchoVlm) -> Vec<(String, Vec<u32>)> {
    let png = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images/liver_crop_64x48.png"),
    )
    .unwrap();
    let opts = GenerationOptions::greedy(10).ignore_eos(true);
    [
        Request::new("Describe the image.").image_bytes(png),
        Request::new("What is a liver cyst?"),
    ]
    .iter()
    .map(|r| {
        let o = m.generate(r, &opts).unwrap();
        (o.text, o.generated_token_ids)
    })
    .collect()
}

fn load(id: &str) -> Result<EchoVlm, EchoError> {
    EchoVlm::load_pretrained(id, &LoadOptions::default())
}

#[test]
fn hub_ids_download_into_the_cache_and_load_offline_from_it() {
    let hub = MockHub::start(BTreeMap::from([
        (
            "echovlm-test/tiny".to_string(),
            MockRepo {
                dir: fixture("tiny-echovlm"),
                commit: COMMIT.into(),
                revisions: vec!["main".into(), COMMIT.into()],
            },
        ),
        (
            "echovlm-test/tiny-sharded".to_string(),
            MockRepo {
                dir: fixture("tiny-echovlm-sharded"),
                commit: SHARDED_COMMIT.into(),
                revisions: vec!["v1".into()],
            },
        ),
    ]));
    let home = tempfile::tempdir().unwrap();
    set("HF_ENDPOINT", &hub.url);
    set("HF_HOME", home.path());
    for k in ["HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"] {
        unset(k);
    }
    let local = EchoVlm::load(fixture("tiny-echovlm"), &LoadOptions::default()).unwrap();
    let want = answers(&local);

    // 1. online: downloaded into HF_HOME/hub, the same answers as the local directory
    let m = load("echovlm-test/tiny").expect("loads from the mock hub");
    assert_eq!(answers(&m), want);
    let repo_dir = home.path().join("hub/models--echovlm-test--tiny");
    let snap = repo_dir.join("snapshots").join(COMMIT);
    assert_eq!(m.dir(), snap.as_path());
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(fixture("tiny-echovlm").join(f)).unwrap(),
            "{f}"
        );
    }
    // the README is not a checkpoint file and is not fetched
    assert!(!snap.join("README.md").exists());
    drop(m);

    // 2. online again with everything cached: the hub is asked for the commit only
    let files_before = hub.counters.files.load(Ordering::SeqCst);
    let m = load("echovlm-test/tiny").unwrap();
    assert_eq!(hub.counters.files.load(Ordering::SeqCst), files_before);
    assert_eq!(answers(&m), want);
    drop(m);

    // 3. offline from the cache: no request reaches the hub
    set("HF_HUB_OFFLINE", "1");
    let (info, files) = (
        hub.counters.info.load(Ordering::SeqCst),
        hub.counters.files.load(Ordering::SeqCst),
    );
    let m = load("echovlm-test/tiny").expect("offline load from the cache");
    assert_eq!(answers(&m), want);
    // a pinned commit is found offline too
    let pinned = load(&format!("echovlm-test/tiny@{COMMIT}")).expect("offline, pinned");
    assert_eq!(pinned.dir(), snap.as_path());
    assert_eq!(
        (
            hub.counters.info.load(Ordering::SeqCst),
            hub.counters.files.load(Ordering::SeqCst)
        ),
        (info, files)
    );
    drop((m, pinned));

    // 3b. an adapter applies over a hub checkpoint as over a directory
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/goldens/tuned-tiny-echovlm/adapter");
    let opts = LoadOptions::default().adapter(&adapter);
    let tuned = answers(&EchoVlm::load(fixture("tiny-echovlm"), &opts).unwrap());
    assert_ne!(tuned, want, "the adapter changes the answers");
    let from_hub = EchoVlm::load_pretrained("echovlm-test/tiny", &opts).unwrap();
    assert_eq!(answers(&from_hub), tuned);
    drop(from_hub);

    // 4. offline with an empty cache: the typed error names the id and says why
    let empty = tempfile::tempdir().unwrap();
    set("HF_HOME", empty.path());
    let Err(err) = load("echovlm-test/tiny") else {
        panic!("loaded offline with an empty cache");
    };
    match &err {
        EchoError::HubOffline { id, cache } => {
            assert_eq!(id, "echovlm-test/tiny");
            assert_eq!(cache, &empty.path().join("hub"));
        }
        other => panic!("expected HubOffline, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("echovlm-test/tiny") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    // HF_HUB_CACHE wins over HF_HOME
    set("HF_HUB_CACHE", home.path().join("hub"));
    assert!(load("echovlm-test/tiny").is_ok());
    unset("HF_HUB_CACHE");
    unset("HF_HUB_OFFLINE");

    // 5. an unknown repository, and an unknown revision: 404, typed
    for id in [
        "echovlm-test/no-such-model",
        "echovlm-test/tiny@no-such-branch",
    ] {
        match load(id) {
            Err(EchoError::HubNotFound { id: got, status }) => {
                assert_eq!((got.as_str(), status), (id, 404));
            }
            Err(other) => panic!("{id}: expected HubNotFound, got {other:?}"),
            Ok(_) => panic!("{id}: loaded"),
        }
    }
    // not an id at all
    assert!(matches!(load("just-a-name"), Err(EchoError::Hub { .. })));

    // 6. a sharded checkpoint at a named revision: the index and every shard it lists
    let m = load("echovlm-test/tiny-sharded@v1").expect("sharded download");
    let local_sharded =
        EchoVlm::load(fixture("tiny-echovlm-sharded"), &LoadOptions::default()).unwrap();
    assert_eq!(answers(&m), answers(&local_sharded));
    let snap = empty
        .path()
        .join("hub/models--echovlm-test--tiny-sharded/snapshots")
        .join(SHARDED_COMMIT);
    for i in 1..=3 {
        assert!(
            snap.join(format!("model-0000{i}-of-00003.safetensors"))
                .is_file()
        );
    }
    assert_eq!(
        std::fs::read_to_string(
            empty
                .path()
                .join("hub/models--echovlm-test--tiny-sharded/refs/v1")
        )
        .unwrap(),
        SHARDED_COMMIT
    );
    drop(m);

    // 7. the hub unreachable: a complete cached copy is used; an uncached one is an error
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    set("HF_ENDPOINT", &dead);
    let m = load("echovlm-test/tiny-sharded@v1").expect("cached copy while the hub is down");
    assert_eq!(m.dir(), snap.as_path());
    match load("echovlm-test/tiny") {
        Err(EchoError::Hub { id, message }) => {
            assert_eq!(id, "echovlm-test/tiny");
            assert!(!message.is_empty());
        }
        Err(other) => panic!("expected Hub, got {other:?}"),
        Ok(_) => panic!("loaded without hub or cache"),
    }

    // 8. an interrupted download resumes: with the first half of the weights already in the
    // cache's partial blob, only the rest is requested, and the checkpoint is whole
    set("HF_ENDPOINT", &hub.url);
    let resumed = tempfile::tempdir().unwrap();
    set("HF_HOME", resumed.path());
    let weights = std::fs::read(fixture("tiny-echovlm").join("model.safetensors")).unwrap();
    let blobs = resumed.path().join("hub/models--echovlm-test--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = weights.len() / 2;
    let partial = blobs.join(format!("{}.part", mock_hub::etag(&weights)));
    std::fs::write(&partial, &weights[..half]).unwrap();
    hub.counters.ranges.lock().unwrap().clear();
    let m = load("echovlm-test/tiny").expect("resumed download");
    assert_eq!(answers(&m), want);
    let snap = resumed
        .path()
        .join("hub/models--echovlm-test--tiny/snapshots")
        .join(COMMIT);
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(!partial.exists());
    let ranges = hub.counters.ranges.lock().unwrap().clone();
    assert!(
        ranges.contains(&("model.safetensors".to_string(), format!("bytes={half}-"))),
        "{ranges:?}"
    );
    // the weights were not fetched from their start again; the other files were (after the
    // one-byte probe hf-hub reads metadata with)
    assert!(
        !ranges.contains(&("model.safetensors".to_string(), "bytes=0-".to_string())),
        "{ranges:?}"
    );
    assert!(
        ranges
            .iter()
            .filter(|(f, _)| f != "model.safetensors")
            .all(|(_, r)| r == "bytes=0-" || r == "bytes=0-0"),
        "{ranges:?}"
    );
    drop(m);

    // 9. a local directory is never taken for a hub id
    let dir = fixture("tiny-echovlm");
    assert!(HubId::from_model_arg(dir.to_str().unwrap()).is_none());
    for k in ["HF_ENDPOINT", "HF_HOME"] {
        unset(k);
    }
}
