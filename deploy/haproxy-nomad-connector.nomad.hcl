# Runs the connector as a Nomad service job beside HAProxy (Data Plane API driver).
# It talks to Nomad through the Task API socket with the task's workload identity, so no token is
# stored anywhere; the identity's policy needs namespace:read-job on the watched namespaces.
# Not validated by this project's CI (Nomad cannot run there): check it with `nomad job validate`.
job "haproxy-nomad-connector" {
  type = "service"

  group "connector" {
    count = 1 # one writer: the connector must not run twice against one HAProxy

    network {
      port "admin" { static = 4650 }
    }

    service {
      name     = "haproxy-nomad-connector"
      provider = "nomad"
      port     = "admin"

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

      config {
        command = "/usr/local/bin/haproxy-nomad-connector"
        # Nomad sets NOMAD_NAMESPACE to this job's namespace in every task; watch all of them.
        args = ["run", "--config", "${NOMAD_TASK_DIR}/connector.json", "--nomad-namespaces", "*"]
      }

      identity {
        env = true # NOMAD_TOKEN for the Task API socket
      }

      template {
        destination = "${NOMAD_TASK_DIR}/connector.json"
        data        = <<EOT
{
  "nomad": {"address": "unix://{{ env "NOMAD_SECRETS_DIR" }}/api.sock"},
  "haproxy": {
    "address": "http://127.0.0.1:5555",
    "username": "admin",
    "password_file": "{{ env "NOMAD_SECRETS_DIR" }}/dpapi-password",
    "frontend": "http",
    "maps_dir": "/etc/haproxy/maps"
  },
  "http": {"listen": "0.0.0.0:4650"},
  "log": {"format": "json"}
}
EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/dpapi-password"
        data        = "{{ with nomadVar \"nomad/jobs/haproxy-nomad-connector\" }}{{ .dpapi_password }}{{ end }}"
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
