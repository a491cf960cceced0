# haproxy-nomad-connector as a Nomad system job, variant without Docker: the exec driver runs the
# release binary, fetched by an artifact block (host it yourself: `cargo build --release`, or
# `cargo install --path .`, then put target/release/haproxy-nomad-connector on an HTTP server
# your clients reach; add `?checksum=sha256:<hex>` to the URL to have Nomad verify it).
# Otherwise the same as haproxy-nomad-connector.nomad.hcl: one connector on each HAProxy node,
# beside its HAProxy and Data Plane API (127.0.0.1:5555).
#
# Before the first run (README, "Deploy"):
#   nomad acl policy apply -namespace default -job haproxy-nomad-connector \
#     haproxy-nomad-connector deploy/acl-policy.hcl
#   nomad var put -namespace default nomad/jobs/haproxy-nomad-connector dpapi_password=…
#   nomad job run -var 'artifact_url=https://files.example.com/haproxy-nomad-connector?checksum=sha256:…' \
#     deploy/haproxy-nomad-connector.exec.nomad.hcl
# It talks to Nomad through the Task API socket with the task's workload identity (no token is
# stored anywhere). CI parses this file and checks its structure (scripts/check_deploy_files.py);
# `nomad job validate` needs a Nomad agent.

variable "artifact_url" {
  type        = string
  description = "URL of the connector's Linux binary (x86_64 or the clients' architecture), optionally with ?checksum=sha256:<hex>."
}

variable "node_class" {
  type        = string
  description = "node.class of the Nomad clients that run HAProxy with the Data Plane API."
  default     = "haproxy"
}

variable "namespaces" {
  type        = string
  description = "Namespaces to watch: * or a comma-separated list (the ACL policy must cover them)."
  default     = "*"
}

variable "dataplane_url" {
  type        = string
  description = "The Data Plane API on each HAProxy node."
  default     = "http://127.0.0.1:5555"
}

variable "dataplane_username" {
  type    = string
  default = "admin"
}

variable "frontend" {
  type        = string
  description = "HAProxy frontend the connector adds its routing rules to."
  default     = "http"
}

variable "maps_dir" {
  type        = string
  description = "The Data Plane API's maps directory (its resources.maps_dir)."
  default     = "/etc/haproxy/maps"
}

job "haproxy-nomad-connector" {
  # One connector per HAProxy: it must run beside each one, and only there.
  type = "system"

  constraint {
    attribute = "${node.class}"
    value     = var.node_class
  }

  group "connector" {
    network {
      port "admin" { static = 4650 }
    }

    service {
      name     = "haproxy-nomad-connector"
      provider = "nomad"
      port     = "admin"

      # Alive: restart the task when the process stops answering.
      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }

      # Ready: converged with Nomad and HAProxy at least once and both reachable.
      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "connector" {
      driver = "exec"

      artifact {
        source      = var.artifact_url
        destination = "local/haproxy-nomad-connector"
        mode        = "file"
      }

      config {
        command = "local/haproxy-nomad-connector"
        # NOMAD_NAMESPACE is this job's own namespace in every task; the flag widens the watch.
        args = ["run", "--config", "${NOMAD_TASK_DIR}/connector.json", "--nomad-namespaces", var.namespaces]
      }

      # NOMAD_TOKEN: the workload identity's token, for the Task API socket.
      identity {
        env = true
      }

      template {
        destination = "local/connector.json"
        data        = <<EOT
{
  "nomad": {"address": "unix://{{ env "NOMAD_SECRETS_DIR" }}/api.sock"},
  "haproxy": {
    "driver": "dataplane",
    "address": "${var.dataplane_url}",
    "username": "${var.dataplane_username}",
    "password_file": "{{ env "NOMAD_SECRETS_DIR" }}/dpapi-password",
    "frontend": "${var.frontend}",
    "maps_dir": "${var.maps_dir}"
  },
  "http": {"listen": "0.0.0.0:4650"},
  "log": {"format": "json"}
}
EOT
      }

      template {
        destination = "secrets/dpapi-password"
        data        = <<EOT
{{ with nomadVar "nomad/jobs/haproxy-nomad-connector" }}{{ .dpapi_password }}{{ end }}
EOT
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
