//! `deploy/kubernetes/`: the manifests validate strictly against the Kubernetes schemas
//! (`kubernetes-validate --strict`, from PyPI), and they agree with the agent: the rules
//! ConfigMap is the repository's default rule set, the config ConfigMap is a config file the
//! agent accepts, and every path it names is where the DaemonSet mounts what it needs (the
//! rules as a directory, never `subPath`; the host's bpffs and cgroup hierarchy; pinning on).

use std::path::{Path, PathBuf};
use std::process::Command;

use dt_tests::agent_process::output_text;
use dt_tests::python_or_skip;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict FILES` with the venv's interpreter.
fn validate(python: &Path, files: &[PathBuf]) -> std::process::Output {
    let bin = python.parent().unwrap().join("kubernetes-validate");
    Command::new(bin)
        .arg("--strict")
        .args(files)
        .output()
        .expect("running kubernetes-validate")
}

/// Every document of every manifest, as JSON (PyYAML in the venv reads them).
fn documents(python: &Path) -> Vec<Value> {
    documents_of(python, &manifests())
}

/// Every document of `files`, in order, as JSON.
fn documents_of(python: &Path, files: &[PathBuf]) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]\n\
                  print(json.dumps(docs))\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kubectl apply -f deploy/kubernetes/` applies the files in the order of their names, and
/// stops at an object whose namespace does not exist yet: each object's namespace is made by an
/// earlier document (its own file's, or a file whose name sorts first).
#[test]
fn kubectl_apply_of_the_directory_makes_the_namespace_first() {
    let Some(python) = python_or_skip("kubectl_apply_of_the_directory_makes_the_namespace_first")
    else {
        return;
    };
    let mut made: Vec<String> = Vec::new();
    for file in manifests() {
        for doc in documents_of(&python, std::slice::from_ref(&file)) {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            if doc["kind"] == "Namespace" {
                made.push(name.to_string());
            } else if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                assert!(
                    made.iter().any(|m| m == ns),
                    "{}: {} {name} is in namespace {ns}, which no earlier file makes \
                     (kubectl applies files in name order)",
                    file.display(),
                    doc["kind"]
                );
            }
        }
    }
    assert!(!made.is_empty(), "no Namespace in deploy/kubernetes");
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn the_manifests_validate_strictly() {
    let Some(python) = python_or_skip("the_manifests_validate_strictly") else {
        return;
    };
    let files = manifests();
    assert!(files.len() >= 3, "{files:?}");
    let out = validate(&python, &files);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    for kind in [
        "daemonset/dt-agent",
        "configmap/dt-rules",
        "configmap/dt-agent-config",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{text}"
        );
    }
    // Strict means strict: an unknown field fails.
    let dir = tempfile::tempdir().unwrap();
    let ds = std::fs::read_to_string(root().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        ds.replace(
            "      hostPID: true\n",
            "      hostPID: true\n      hostPIDs: true\n",
        ),
    )
    .unwrap();
    let out = validate(&python, &[bad]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("'hostPIDs' was unexpected"));
}

#[test]
fn the_manifests_agree_with_the_agent() {
    let Some(python) = python_or_skip("the_manifests_agree_with_the_agent") else {
        return;
    };
    let docs = documents(&python);

    // The rules ConfigMap is the repository's default rule set, file for file.
    let rules = &find(&docs, "ConfigMap", "dt-rules")["data"];
    let mut want = Vec::new();
    for e in std::fs::read_dir(root().join("rules")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            assert_eq!(
                rules[&name],
                text.as_str(),
                "deploy/kubernetes/rules.yaml: {name}"
            );
            want.push(name);
        }
    }
    assert_eq!(rules.as_object().unwrap().len(), want.len());

    // The config ConfigMap is a config file the agent takes.
    let toml = find(&docs, "ConfigMap", "dt-agent-config")["data"]["agent.toml"]
        .as_str()
        .unwrap();
    let layer = dt_agent::settings::parse(Path::new("/etc/dt/config/agent.toml"), toml)
        .unwrap_or_else(|d| panic!("agent.toml: {d:?}"));
    let s = dt_agent::settings::resolve(Some(layer), Default::default()).unwrap();
    assert!(s.pin, "pinning on, for rolling updates without a gap");
    assert!(s.metrics_public);

    // The DaemonSet mounts what the config names, where it names it.
    let ds = find(&docs, "DaemonSet", "dt-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(c["resources"]["requests"]["cpu"].is_string());
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/dt/config/agent.toml"]);
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "K8S_NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "the node name, by the downward API"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    // The volume mounted at `path` (a mount point at or above it).
    let volume_at = |path: &Path| -> (&Value, &Value) {
        let m = mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
        assert!(m.get("subPath").is_none(), "never subPath: {m}");
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        (m, v)
    };
    let (_, v) = volume_at(&s.rules_dir);
    assert_eq!(v["configMap"]["name"], "dt-rules");
    let (_, v) = volume_at(Path::new("/etc/dt/config/agent.toml"));
    assert_eq!(v["configMap"]["name"], "dt-agent-config");
    let (m, v) = volume_at(&s.pin_dir);
    assert_eq!(v["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(m["mountPropagation"], "Bidirectional");
    let (_, v) = volume_at(s.cgroup.as_deref().expect("the host's cgroup hierarchy"));
    assert_eq!(v["hostPath"]["path"], "/sys/fs/cgroup");
    let (_, v) = volume_at(&s.state_dir);
    assert!(v["hostPath"].is_object(), "state on the node: {v}");
    let (_, v) = volume_at(&s.socket);
    assert!(v["hostPath"].is_object(), "the socket on the node: {v}");
    assert!(mounts.iter().all(|m| m.get("subPath").is_none()));

    // Scraped where the agent serves.
    let port = s.metrics_addr.expect("a metrics address").port();
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], port.to_string().as_str());
    assert_eq!(c["ports"][0]["containerPort"], port);
}
