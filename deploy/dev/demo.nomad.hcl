# Demo job of the development stack: two instances of busybox httpd under raw_exec (enabled by
# `nomad agent -dev`), registered in Nomad's native service discovery and tagged for the
# connector. busybox is the base of the hashicorp/nomad image, so /bin/busybox is there.
# `curl -H 'Host: demo.localhost' localhost:8080` answers from one of them.
job "demo" {
  type = "service"

  group "web" {
    count = 2

    network {
      port "http" {}
    }

    service {
      name     = "demo"
      provider = "nomad"
      port     = "http"
      tags = [
        "haproxy.enable=true",
        "haproxy.domain=demo.localhost",
        "haproxy.check.path=/",
      ]
    }

    task "httpd" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args = [
          "-c",
          "echo \"hello from demo instance $NOMAD_ALLOC_INDEX ($NOMAD_ALLOC_ID)\" > \"$NOMAD_TASK_DIR/index.html\" && exec /bin/busybox httpd -f -v -p \"$NOMAD_PORT_http\" -h \"$NOMAD_TASK_DIR\"",
        ]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
