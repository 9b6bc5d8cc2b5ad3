//! The Kubernetes equivalent of a Slurm launch, rendered only: an Indexed Job of `workers` pods, each one
//! `tandem-worker` with its GPUs as `nvidia.com/gpu` limits, the worker token mounted from a Secret (mode 0400,
//! never in the pod spec or its environment), and a termination grace period in which SIGTERM gives the same
//! checkpoint-and-hand-back path as Slurm's stop signal.

use super::LaunchError;
use super::worker::{WorkerSpec, plain_text};

/// Where the Secret's `token` key is mounted in the pod.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/tandem";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeRequest {
    /// The worker's settings; `token_file` is ignored (the token comes from `token_secret`).
    pub worker: WorkerSpec,
    /// The Job's name.
    pub name: String,
    pub namespace: Option<String>,
    /// Pods (workers) in the Indexed Job.
    pub workers: u32,
    /// A container image holding `tandem-worker` on its PATH.
    pub image: String,
    /// The Secret holding the worker token under key `token`; `None`: the coordinator needs no token.
    pub token_secret: Option<String>,
}

/// A DNS-1123 label, as Kubernetes names must be.
fn dns_label(flag: &str, value: &str) -> Result<(), LaunchError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LaunchError::invalid(
            flag,
            format!(
                "{value:?}: lower-case letters, digits and '-' accepted, at most 63, not starting or ending with '-'"
            ),
        ))
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(value: &str) -> String {
    serde_json::to_string(value).expect("strings serialise")
}

impl KubeRequest {
    pub fn render(&self) -> Result<String, LaunchError> {
        let w = &self.worker;
        w.check()?;
        dns_label("--name", &self.name)?;
        if let Some(ns) = &self.namespace {
            dns_label("--namespace", ns)?;
        }
        if let Some(secret) = &self.token_secret {
            dns_label("--token-secret", secret)?;
        }
        if self.workers == 0 || self.workers > super::script::MAX_WORKERS {
            return Err(LaunchError::invalid(
                "--workers",
                format!(
                    "{}: 1 to {} accepted",
                    self.workers,
                    super::script::MAX_WORKERS
                ),
            ));
        }
        plain_text("--image", &self.image)?;
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            return Err(LaunchError::invalid(
                "--image",
                format!("{:?}: an image reference is needed", self.image),
            ));
        }

        let mut args: Vec<String> = vec![
            "agent".into(),
            "--coordinator".into(),
            w.coordinator.clone(),
        ];
        if self.token_secret.is_some() {
            args.extend(["--token-file".into(), format!("{TOKEN_MOUNT}/token")]);
        }
        if let Some(ca) = &w.ca_cert {
            args.extend(["--ca-cert".into(), ca.to_string_lossy().into_owned()]);
        }
        args.extend([
            "--gpus".into(),
            w.gpus.to_string(),
            "--threads".into(),
            w.cpus.to_string(),
            "--work-dir".into(),
            "/scratch/work".into(),
            "--shutdown-grace-s".into(),
            w.shutdown_grace_s().to_string(),
        ]);
        args.extend(w.worker_args.iter().cloned());

        let mut y = String::new();
        let mut line = |indent: usize, text: &str| {
            y.push_str(&" ".repeat(indent));
            y.push_str(text);
            y.push('\n');
        };
        line(
            0,
            "# Tandem workers as a Kubernetes Indexed Job, written by `tandem launch k8s --dry-run`.",
        );
        line(
            0,
            "# SIGTERM on pod deletion or preemption: the worker checkpoints, hands its lease back and exits 0",
        );
        line(0, "# within terminationGracePeriodSeconds.");
        line(0, "apiVersion: batch/v1");
        line(0, "kind: Job");
        line(0, "metadata:");
        line(2, &format!("name: {}", q(&self.name)));
        if let Some(ns) = &self.namespace {
            line(2, &format!("namespace: {}", q(ns)));
        }
        line(2, "labels:");
        line(4, "app.kubernetes.io/name: \"tandem-worker\"");
        line(0, "spec:");
        line(2, "completionMode: Indexed");
        line(2, &format!("completions: {}", self.workers));
        line(2, &format!("parallelism: {}", self.workers));
        line(
            2,
            &format!("backoffLimit: {}", self.workers.saturating_mul(4)),
        );
        line(2, "template:");
        line(4, "metadata:");
        line(6, "labels:");
        line(8, "app.kubernetes.io/name: \"tandem-worker\"");
        line(4, "spec:");
        line(6, "restartPolicy: OnFailure");
        line(6, &format!("terminationGracePeriodSeconds: {}", w.grace_s));
        line(6, "containers:");
        line(8, "- name: \"worker\"");
        line(10, &format!("image: {}", q(&self.image)));
        line(10, "command: [\"tandem-worker\"]");
        line(10, "args:");
        for arg in &args {
            line(12, &format!("- {}", q(arg)));
        }
        line(10, "env:");
        for (name, path) in [
            ("TANDEM_K8S_POD", "metadata.name"),
            ("TANDEM_K8S_NODE", "spec.nodeName"),
        ] {
            line(12, &format!("- name: {name}"));
            line(14, "valueFrom:");
            line(16, "fieldRef:");
            line(18, &format!("fieldPath: {path}"));
        }
        line(10, "resources:");
        for section in ["requests", "limits"] {
            line(12, &format!("{section}:"));
            line(14, &format!("cpu: {}", q(&w.cpus.to_string())));
            if let Some(mem) = &w.mem {
                line(14, &format!("memory: {}", q(&kube_memory(mem))));
            }
            if w.gpus > 0 {
                line(14, &format!("nvidia.com/gpu: {}", q(&w.gpus.to_string())));
            }
        }
        line(10, "volumeMounts:");
        if self.token_secret.is_some() {
            line(12, "- name: \"token\"");
            line(14, &format!("mountPath: {}", q(TOKEN_MOUNT)));
            line(14, "readOnly: true");
        }
        line(12, "- name: \"scratch\"");
        line(14, "mountPath: \"/scratch\"");
        line(6, "volumes:");
        if let Some(secret) = &self.token_secret {
            line(8, "- name: \"token\"");
            line(10, "secret:");
            line(12, &format!("secretName: {}", q(secret)));
            // 0400: the worker refuses a token file others can read.
            line(12, "defaultMode: 256");
            line(12, "items:");
            line(14, "- key: \"token\"");
            line(16, "path: \"token\"");
        }
        line(8, "- name: \"scratch\"");
        line(10, "emptyDir: {}");
        Ok(y)
    }
}

/// Slurm's memory notation (`64G`) in Kubernetes' (`64Gi`); a bare number is MiB in Slurm.
fn kube_memory(mem: &str) -> String {
    match mem.chars().last() {
        Some(unit) if unit.is_ascii_alphabetic() => {
            format!("{}{}i", &mem[..mem.len() - 1], unit.to_ascii_uppercase())
        }
        _ => format!("{mem}Mi"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::worker::tests::spec;
    use super::*;

    fn request() -> KubeRequest {
        KubeRequest {
            worker: WorkerSpec { gpus: 2, ..spec() },
            name: "tandem-workers".into(),
            namespace: Some("radiology".into()),
            workers: 4,
            image: "registry.lab.example/tandem:0.1.0".into(),
            token_secret: Some("tandem-worker-token".into()),
        }
    }

    #[test]
    fn the_indexed_job_parses_and_holds_gpus_secret_and_grace() {
        let yaml = request().render().unwrap();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let get = |path: &str| -> serde_yaml::Value {
            let mut v = &doc;
            for key in path.split('.') {
                v = match key.parse::<usize>() {
                    Ok(i) => &v[i],
                    Err(_) => &v[key],
                };
            }
            v.clone()
        };
        assert_eq!(get("kind").as_str(), Some("Job"));
        assert_eq!(get("spec.completionMode").as_str(), Some("Indexed"));
        assert_eq!(get("spec.completions").as_u64(), Some(4));
        assert_eq!(get("metadata.namespace").as_str(), Some("radiology"));
        let pod = "spec.template.spec";
        assert_eq!(
            get(&format!("{pod}.terminationGracePeriodSeconds")).as_u64(),
            Some(120)
        );
        let container = format!("{pod}.containers.0");
        assert_eq!(
            get(&format!("{container}.resources.limits"))["nvidia.com/gpu"].as_str(),
            Some("2")
        );
        assert_eq!(
            get(&format!("{container}.resources.limits.memory")).as_str(),
            Some("64Gi")
        );
        let args: Vec<String> = get(&format!("{container}.args"))
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(after("--token-file"), "/var/run/secrets/tandem/token");
        assert_eq!(after("--gpus"), "2");
        assert_eq!(after("--shutdown-grace-s"), "110");
        assert_eq!(after("--coordinator"), "https://coord.lab.example:7070");
        assert_eq!(args[0], "agent");
        let volume = get(&format!("{pod}.volumes.0.secret"));
        assert_eq!(volume["secretName"].as_str(), Some("tandem-worker-token"));
        assert_eq!(volume["defaultMode"].as_u64(), Some(0o400));
        // The token itself is nowhere in the spec, only the Secret's name.
        assert!(!yaml.contains("tdm_"), "{yaml}");
    }

    #[test]
    fn without_a_secret_no_token_is_mounted_and_names_are_checked() {
        let open = KubeRequest {
            token_secret: None,
            ..request()
        };
        let yaml = open.render().unwrap();
        assert!(
            !yaml.contains("--token-file") && !yaml.contains("secretName"),
            "{yaml}"
        );
        serde_yaml::from_str::<serde_yaml::Value>(&yaml).unwrap();
        for (bad, flag) in [
            (
                KubeRequest {
                    name: "Tandem_Workers".into(),
                    ..request()
                },
                "--name",
            ),
            (
                KubeRequest {
                    namespace: Some("-x".into()),
                    ..request()
                },
                "--namespace",
            ),
            (
                KubeRequest {
                    image: "".into(),
                    ..request()
                },
                "--image",
            ),
            (
                KubeRequest {
                    workers: 0,
                    ..request()
                },
                "--workers",
            ),
        ] {
            let err = bad.render().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
        }
    }
}
