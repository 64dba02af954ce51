#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn manifest(name: &str, version: &str) -> Manifest {
    Manifest {
        name: name.to_string(),
        version: version.to_string(),
        description: "a test plugin".to_string(),
        role: Role::Message,
        capabilities: vec![wsgate_config::Capability::Log],
        config_schema: None,
    }
}

#[test]
fn components_are_stored_by_digest_and_listed_by_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let b = store
        .add(b"bytes of b", manifest("b", "1.0.0"), None, None)
        .unwrap();
    let a2 = store
        .add(
            b"bytes of a2",
            manifest("a", "2.0.0"),
            Some("{}".into()),
            Some("sig"),
        )
        .unwrap();
    let a1 = store
        .add(b"bytes of a1", manifest("a", "1.0.0"), None, None)
        .unwrap();
    assert_eq!(
        std::fs::read(store.blob_path(&b.digest)).unwrap(),
        b"bytes of b"
    );
    assert_eq!(b.digest, digest_of(b"bytes of b"));
    assert_eq!(store.list().unwrap(), vec![a1, a2.clone(), b]);
    assert_eq!(store.get("a", "2.0.0").unwrap(), a2);
    assert_eq!(store.signature(&a2.digest).as_deref(), Some("sig"));
    assert_eq!(a2.config_schema_json.as_deref(), Some("{}"));
}

#[test]
fn a_stored_version_never_changes_but_adding_it_again_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    store
        .add(b"one", manifest("p", "1.0.0"), None, None)
        .unwrap();
    store
        .add(b"one", manifest("p", "1.0.0"), None, None)
        .unwrap();
    let error = store
        .add(b"two", manifest("p", "1.0.0"), None, None)
        .unwrap_err();
    assert!(matches!(error, StoreError::Immutable { .. }), "{error}");
    assert!(error.to_string().contains("p@1.0.0"), "{error}");
    assert_eq!(
        store.verify(&store.get("p", "1.0.0").unwrap()).unwrap(),
        b"one"
    );
}

#[test]
fn damaged_and_missing_plugins_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let entry = store
        .add(b"good", manifest("p", "1.0.0"), None, None)
        .unwrap();
    std::fs::write(store.blob_path(&entry.digest), b"evil").unwrap();
    let error = store.verify(&entry).unwrap_err();
    assert!(matches!(error, StoreError::Damaged { .. }), "{error}");
    let error = store.get("p", "9.9.9").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("p@9.9.9 is not in the plugin store"),
        "{error}"
    );
}

#[test]
fn manifests_are_checked_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate-plugin.toml");
    std::fs::write(
        &path,
        "name = \"p\"\nversion = \"1.0.0\"\ndescription = \"d\"\nrole = \"message\"\n\
         capabilities = [\"log\"]\nconfig-schema = \"schema.json\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("schema.json"), "{\"type\": \"object\"}").unwrap();
    let (manifest, schema) = Manifest::read(&path).unwrap();
    assert_eq!(manifest.role, Role::Message);
    assert_eq!(schema.as_deref(), Some("{\"type\": \"object\"}"));

    std::fs::write(
        &path,
        "name = \"p\"\nversion = \"1\"\ndescription = \"d\"\nrole = \"sideways\"\n",
    )
    .unwrap();
    let error = Manifest::read(&path).unwrap_err().to_string();
    assert!(
        error.contains("wsgate-plugin.toml") && error.contains("line 4"),
        "{error}"
    );

    std::fs::write(
        &path,
        "name = \"../p\"\nversion = \"1\"\ndescription = \"d\"\nrole = \"upgrade\"\n",
    )
    .unwrap();
    let error = Manifest::read(&path).unwrap_err().to_string();
    assert!(error.contains("name `../p`"), "{error}");
}

#[test]
fn a_manifest_must_tell_the_truth_about_its_component() {
    let manifest = manifest("p", "1.0.0");
    let log = (
        "wsgate:plugin/log".to_string(),
        Some(wsgate_config::Capability::Log),
    );
    let plain = ("wasi:io/streams".to_string(), None);
    assert_eq!(
        manifest.check_component(Some(Role::Message), &[log.clone(), plain]),
        Ok(())
    );
    let error = manifest
        .check_component(Some(Role::Filter), &[log])
        .unwrap_err();
    assert!(error.contains("role `message`"), "{error}");
    let error = manifest.check_component(None, &[]).unwrap_err();
    assert!(error.contains("neither"), "{error}");
    let mut quiet = manifest.clone();
    quiet.capabilities.clear();
    let log = (
        "wsgate:plugin/log".to_string(),
        Some(wsgate_config::Capability::Log),
    );
    let error = quiet
        .check_component(Some(Role::Message), &[log])
        .unwrap_err();
    assert!(error.contains("does not request it"), "{error}");
}

#[test]
fn an_index_entry_must_record_the_pinned_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let entry = store
        .add(b"bytes", manifest("p", "1.0.0"), None, None)
        .unwrap();
    let path = store.entry_path("p", "1.0.0");
    assert_eq!(check_entry(&path, &entry.digest.to_uppercase()), Ok(()));
    let error = check_entry(&path, &digest_of(b"other")).unwrap_err();
    assert!(error.contains("the plugin store has it as"), "{error}");
    let error = check_entry(&store.entry_path("q", "1.0.0"), &entry.digest).unwrap_err();
    assert!(error.contains("not in the plugin store"), "{error}");
}
