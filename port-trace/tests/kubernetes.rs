//! deploy/kubernetes/ against Kubernetes' own schemas: every manifest validates strictly
//! (`kubernetes-validate --strict`, PyPI; `cargo xtask test` installs it in a venv under
//! target/ and sets PORT_TRACE_REQUIRE_KUBE_VALIDATE) for the oldest and the newest
//! Kubernetes we pin, and a copy with an unknown field fails, so the check cannot pass
//! vacuously. What the schemas cannot check is checked here against the DaemonSet: the
//! PodMonitor (a Prometheus Operator CRD, which kubernetes-validate has no schema for: its
//! fields against the operator's API, its selector, port and namespace against the
//! DaemonSet's), the Service, and the Prometheus job for pods in deploy/prometheus (Debian's
//! promtool is built without Kubernetes discovery, so it cannot parse that job).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::repo_root;
use serde_json::Value;

/// The Kubernetes versions validated against: an old one still common on managed clusters,
/// and the newest kubernetes-validate 1.37.0 knows.
const VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
const REQUIRE: &str = "PORT_TRACE_REQUIRE_KUBE_VALIDATE";
/// The kinds that are CRDs: no schema in kubernetes-validate (it warns and passes them).
const CRD_KINDS: [&str; 1] = ["PodMonitor"];

/// kubernetes-validate: where `cargo xtask test` says, else its venv under target/, else on
/// PATH. None (skip, with the reason) where there is none, unless PORT_TRACE_REQUIRE_KUBE_VALIDATE.
fn kubernetes_validate(test: &str) -> Option<PathBuf> {
    let venv = repo_root().join("target/kubernetes-validate/bin/kubernetes-validate");
    let found = std::env::var_os("PORT_TRACE_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .or_else(|| venv.is_file().then_some(venv))
        .or_else(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|dir| dir.join("kubernetes-validate"))
                .find(|c| c.is_file())
        });
    match found {
        Some(tool) => Some(tool),
        None if std::env::var_os(REQUIRE).is_some() => {
            panic!("{test}: kubernetes-validate is not installed, and {REQUIRE} is set")
        }
        None => {
            eprintln!(
                "skipped {test}: kubernetes-validate is not installed (`sudo cargo xtask test` \
                 installs it in target/kubernetes-validate)"
            );
            None
        }
    }
}

fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// Every manifest in deploy/kubernetes/.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .expect("deploy/kubernetes/")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("daemonset.yaml")),
        "{files:?}"
    );
    files
}

/// A manifest (one document) as JSON-like values.
fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn manifest(name: &str) -> Value {
    yaml(&kubernetes_dir().join(name))
}

fn validate(tool: &Path, version: &str, file: &Path) -> Output {
    Command::new(tool)
        .args(["--strict", "--kubernetes-version", version])
        .arg(file)
        .output()
        .expect("kubernetes-validate runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_manifest_validates_strictly() {
    let Some(tool) = kubernetes_validate("every_manifest_validates_strictly") else {
        return;
    };
    for version in VERSIONS {
        for file in manifests() {
            let kind = yaml(&file)["kind"].as_str().unwrap_or_default().to_string();
            let output = validate(&tool, version, &file);
            let said = text(&output);
            eprint!("{said}");
            assert!(
                output.status.success() && !said.contains("ERROR"),
                "{} against {version}: {said}",
                file.display()
            );
            if CRD_KINDS.contains(&kind.as_str()) {
                // No schema: checked by the_crds_and_scrape_config_match_the_daemonset.
                assert!(said.contains("Couldn't find schema"), "{said}");
            } else {
                // Passed for its schema, not waved through for want of one.
                assert!(
                    said.contains("passed"),
                    "{} ({kind}) against {version}: {said}",
                    file.display()
                );
            }
        }
    }
}

/// The negative control: the same manifests with one unknown field each fail, and a copy
/// re-serialized without one passes (so the failure is the field's).
#[test]
fn an_unknown_field_fails_validation() {
    let Some(tool) = kubernetes_validate("an_unknown_field_fails_validation") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("port-trace-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let daemonset = manifest("daemonset.yaml");
    let write = |name: &str, value: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, serde_yaml_ng::to_string(value).expect("YAML")).expect("written");
        path
    };
    let version = VERSIONS[VERSIONS.len() - 1];
    let same = write("same.yaml", &daemonset);
    let output = validate(&tool, version, &same);
    assert!(output.status.success(), "{}", text(&output));

    // A misspelt field where a typo would silently do nothing on a real cluster.
    let mut typo = daemonset.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] =
        Value::Bool(true);
    let mut wrong_type = daemonset.clone();
    // Not "yes": YAML 1.1 readers (PyYAML) take an unquoted yes for true.
    wrong_type["spec"]["template"]["spec"]["hostPID"] = Value::String("always".into());
    let mut namespace = manifest("namespace.yaml");
    namespace["metadata"]["lables"] = serde_json::json!({"a": "b"});
    for (name, broken, field) in [
        ("typo.yaml", typo, "readOnlyRootFilesytem"),
        ("wrong-type.yaml", wrong_type, "hostPID"),
        ("namespace.yaml", namespace, "lables"),
    ] {
        let path = write(name, &broken);
        let output = validate(&tool, version, &path);
        let said = text(&output);
        assert!(
            !output.status.success() && said.contains(field),
            "{name} should fail on {field}: {said}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The labels in `selector` (`matchLabels`) all on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// The labels that name the workloads port-trace reports: no scrape may set them on its
/// targets, or they would collide with (and rename) port-trace's own.
const WORKLOAD_LABELS: [&str; 3] = ["namespace", "pod", "container"];

#[test]
fn the_crds_and_scrape_config_match_the_daemonset() {
    let namespace = manifest("namespace.yaml");
    let daemonset = manifest("daemonset.yaml");
    let service = manifest("service.yaml");
    let monitor = manifest("podmonitor.yaml");
    let ns = namespace["metadata"]["name"].as_str().expect("a namespace");
    for (name, m) in [
        ("daemonset", &daemonset),
        ("service", &service),
        ("podmonitor", &monitor),
    ] {
        assert_eq!(m["metadata"]["namespace"], ns, "{name}");
    }
    let pod = &daemonset["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(selects(&daemonset["spec"]["selector"], labels));
    let container = &pod["spec"]["containers"][0];
    let port = &container["ports"][0];
    let (port_name, port_number) = (
        port["name"].as_str().expect("a named port"),
        port["containerPort"].as_u64().expect("a port number"),
    );
    // Never one a connect() on the node could take first.
    assert!(
        !(32768..=60999).contains(&port_number),
        "{port_number} is in the default ephemeral range"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--prometheus")
        .map(|w| w[1])
        .expect("--prometheus in the args");
    assert_eq!(listen, format!("0.0.0.0:{port_number}"));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port_number.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(get["port"], port_name, "{probe}");
    }

    // The Service: headless, over the same pods and port.
    assert!(selects(
        &serde_json::json!({"matchLabels": service["spec"]["selector"]}),
        labels
    ));
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port_name);
    assert_eq!(service["spec"]["ports"][0]["port"], port_number);

    // The PodMonitor: the operator's API (monitoring.coreos.com/v1), its fields among the
    // ones that API has, selecting the DaemonSet's pods in its namespace on the named port.
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert!(
        monitor["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let spec = &monitor["spec"];
    for key in keys(spec) {
        assert!(
            [
                "selector",
                "namespaceSelector",
                "podMetricsEndpoints",
                "jobLabel",
                "podTargetLabels",
                "sampleLimit",
                "targetLimit",
                "attachMetadata",
            ]
            .contains(&key),
            "PodMonitor spec has no field {key}"
        );
    }
    assert!(selects(&spec["selector"], labels));
    let names = spec["namespaceSelector"]["matchNames"]
        .as_array()
        .expect("matchNames");
    assert!(names.iter().any(|n| n == ns), "{names:?}");
    let endpoints = spec["podMetricsEndpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        for key in keys(endpoint) {
            assert!(
                [
                    "port",
                    "path",
                    "scheme",
                    "interval",
                    "scrapeTimeout",
                    "honorLabels",
                    "honorTimestamps",
                    "relabelings",
                    "metricRelabelings",
                ]
                .contains(&key),
                "PodMetricsEndpoint has no field {key}"
            );
        }
        assert_eq!(endpoint["port"], port_name);
        assert_eq!(endpoint["path"], "/metrics");
        let relabelings = endpoint["relabelings"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for rule in &relabelings {
            for key in keys(rule) {
                assert!(
                    [
                        "sourceLabels",
                        "separator",
                        "targetLabel",
                        "regex",
                        "modulus",
                        "replacement",
                        "action"
                    ]
                    .contains(&key),
                    "RelabelConfig has no field {key}"
                );
            }
            let target = rule["targetLabel"].as_str().unwrap_or_default();
            assert!(!WORKLOAD_LABELS.contains(&target), "{rule}");
        }
        // The operator's own namespace/pod/container target labels are dropped.
        let dropped: Vec<&str> = relabelings
            .iter()
            .filter(|r| r["action"] == "labeldrop")
            .flat_map(|r| r["regex"].as_str().unwrap_or_default().split('|'))
            .collect();
        for label in WORKLOAD_LABELS {
            assert!(
                dropped.contains(&label),
                "{label} is not dropped: {dropped:?}"
            );
        }
    }

    // The plain Prometheus job for pods: discovers pods in the namespace, keeps port-trace's
    // by its label, and sets no workload label on the targets.
    let config = yaml(&repo_root().join("deploy/prometheus/prometheus.yml"));
    let job = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "port-trace-pods")
        .expect("a port-trace-pods job");
    let sd = &job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "pod");
    assert!(
        sd["namespaces"]["names"]
            .as_array()
            .expect("names")
            .iter()
            .any(|n| n == ns)
    );
    let rules = job["relabel_configs"].as_array().expect("relabel_configs");
    let (label, value) = labels
        .as_object()
        .and_then(|l| l.iter().next())
        .expect("a pod label");
    let meta = format!(
        "__meta_kubernetes_pod_label_{}",
        label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    assert!(
        rules.iter().any(|r| r["action"] == "keep"
            && r["source_labels"][0] == meta
            && r["regex"] == *value),
        "no keep rule on {meta}={value}"
    );
    for rule in rules {
        let target = rule["target_label"].as_str().unwrap_or_default();
        assert!(!WORKLOAD_LABELS.contains(&target), "{rule}");
    }
}

#[test]
fn the_daemonset_asks_for_least_privilege_on_every_node() {
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["automountServiceAccountToken"], false);
    // Tolerates every taint: an Exists toleration with no key.
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "{}",
        pod["tolerations"]
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut added: Vec<&str> = security["capabilities"]["add"]
        .as_array()
        .expect("capabilities to add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    added.sort_unstable();
    assert_eq!(
        added,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE"
        ]
    );
    // Every host path read-only but tracefs (the kprobe backend makes its kprobe events
    // there), at its own path, never the host's root.
    let volumes = pod["volumes"].as_array().expect("volumes");
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let writable = mount["mountPath"] == "/sys/kernel/tracing";
        assert_eq!(mount["readOnly"] == true, !writable, "{mount}");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let host = volume["hostPath"]["path"].as_str().expect("a hostPath");
        assert_ne!(host, "/", "{volume}");
        assert_eq!(mount["mountPath"], host, "{mount}");
    }
    for limit in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][limit][resource].is_string(),
                "resources.{limit}.{resource}"
            );
        }
    }
}

/// The image's default arguments (deploy/Containerfile's CMD) are the DaemonSet's, spelled
/// out there: `docker run port-trace` and the pod run the same thing.
#[test]
fn the_image_defaults_are_the_daemonsets_args() {
    let containerfile =
        std::fs::read_to_string(repo_root().join("deploy/Containerfile")).expect("Containerfile");
    let instruction = |name: &str| -> Vec<String> {
        let line = containerfile
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in the Containerfile"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} is not exec form: {e}"))
    };
    assert_eq!(instruction("ENTRYPOINT"), ["/usr/bin/port-trace"]);
    let daemonset = manifest("daemonset.yaml");
    let args: Vec<String> = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect();
    assert_eq!(instruction("CMD"), args);
}
