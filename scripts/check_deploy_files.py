#!/usr/bin/env python3
"""Structural checks of the shipped deployment files that have no validator of their own here.

Needs python-hcl2 and PyYAML (scripts/check-deploy.sh installs them). Exit 0 when every check
holds, 1 otherwise, with one line per failure. Checks:
- deploy/haproxy-nomad-connector.nomad.hcl (Docker) and .exec.nomad.hcl (exec + artifact): a
  system job constrained to a node class given as a variable, the task's workload identity in the
  environment, the Task API socket as Nomad address, the watch widened past NOMAD_NAMESPACE, a
  /healthz check with check_restart and a /readyz check on the admin port, the connector's
  configuration rendered to local/ and the DPAPI password read from the job's Nomad variable into
  secrets/.
- deploy/acl-policy.hcl: only namespace rules, each granting exactly read-job.
- deploy/dev/dataplaneapi.yml: parses; listens on 127.0.0.1:5555 with a user; its maps_dir,
  config_file and the connector's dev configuration agree with deploy/dev/haproxy.cfg.
- deploy/dev/demo.nomad.hcl: two instances of a service tagged for the connector with the domain
  the README's curl uses.
"""

import json
import re
import sys
from pathlib import Path

import hcl2
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAILURES: list[str] = []
CHECKED: list[str] = []


def fail(where: str, what: str) -> None:
    FAILURES.append(f"{where}: {what}")


def passed(since: int, line: str) -> None:
    """Reports `line` as checked when no failure was recorded after `since`."""
    if len(FAILURES) == since:
        CHECKED.append(line)


def unq(value):
    """python-hcl2 keeps the quotes of string literals; strip them."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def blocks(node: dict, name: str) -> list:
    return node.get(name, []) if isinstance(node, dict) else []


def labelled(node: dict, name: str) -> dict:
    """{label: body} of the `name "label" { … }` blocks of node."""
    out = {}
    for block in blocks(node, name):
        for label, body in block.items():
            out[unq(label)] = body
    return out


def load_hcl(rel: str):
    path = ROOT / rel
    try:
        with path.open() as f:
            return hcl2.load(f)
    except Exception as e:  # noqa: BLE001 - any parse error is a failed check
        fail(rel, f"does not parse as HCL: {e}")
        return None


def check_job(rel: str, driver: str) -> None:
    since = len(FAILURES)
    doc = load_hcl(rel)
    if doc is None:
        return
    variables = labelled(doc, "variable")
    if "node_class" not in variables:
        fail(rel, "no `node_class` variable")
    jobs = labelled(doc, "job")
    job = jobs.get("haproxy-nomad-connector")
    if job is None:
        fail(rel, 'no job "haproxy-nomad-connector"')
        return
    if unq(job.get("type")) != "system":
        fail(rel, f"job type is {job.get('type')!r}, want \"system\" (one connector per HAProxy node)")
    constraints = blocks(job, "constraint")
    if not any(
        unq(c.get("attribute")) in ("${node.class}", "${meta.haproxy}")
        and "var.node_class" in str(c.get("value"))
        for c in constraints
    ):
        fail(rel, "no constraint of ${node.class} to var.node_class")
    groups = labelled(job, "group")
    if len(groups) != 1:
        fail(rel, f"want exactly one group, found {len(groups)}")
        return
    group = next(iter(groups.values()))
    if "count" in group:
        fail(rel, "a system job's group must not set count")
    ports = {}
    for net in blocks(group, "network"):
        ports.update(labelled(net, "port"))
    if ports.get("admin", {}).get("static") != 4650:
        fail(rel, "no static admin port 4650")
    services = blocks(group, "service")
    checks = [c for s in services for c in blocks(s, "check")]
    by_path = {unq(c.get("path")): c for c in checks}
    alive = by_path.get("/healthz")
    if alive is None:
        fail(rel, "no /healthz check")
    elif not blocks(alive, "check_restart"):
        fail(rel, "the /healthz check has no check_restart")
    ready = by_path.get("/readyz")
    if ready is None:
        fail(rel, "no /readyz check")
    for c in checks:
        if unq(c.get("type")) != "http":
            fail(rel, f"check {c.get('name')} is not an http check")
    if not all(unq(s.get("port")) == "admin" and unq(s.get("provider")) == "nomad" for s in services):
        fail(rel, "services must use the admin port and provider nomad")
    tasks = labelled(group, "task")
    task = tasks.get("connector")
    if task is None:
        fail(rel, 'no task "connector"')
        return
    if unq(task.get("driver")) != driver:
        fail(rel, f"driver is {task.get('driver')!r}, want {driver!r}")
    config = (blocks(task, "config") or [{}])[0]
    if driver == "docker":
        if "var.image" not in str(config.get("image")):
            fail(rel, "docker config.image is not var.image")
        if unq(config.get("network_mode")) != "host":
            fail(rel, "docker network_mode must be host (the Data Plane API is on the host's loopback)")
    else:
        artifacts = blocks(task, "artifact")
        if not artifacts or "var.artifact_url" not in str(artifacts[0].get("source")):
            fail(rel, "no artifact from var.artifact_url")
        elif unq(artifacts[0].get("destination")) != unq(config.get("command")):
            fail(rel, "config.command is not the artifact's destination")
    args = [unq(a) for a in config.get("args", [])]
    if args[:3] != ["run", "--config", "${NOMAD_TASK_DIR}/connector.json"]:
        fail(rel, f"args {args!r} do not run with ${{NOMAD_TASK_DIR}}/connector.json")
    if "--nomad-namespaces" not in args:
        fail(rel, "args do not set --nomad-namespaces (NOMAD_NAMESPACE would narrow the watch)")
    identity = blocks(task, "identity")
    if not identity or identity[0].get("env") is not True:
        fail(rel, "no identity { env = true } (workload identity token for the Task API)")
    templates = {unq(t.get("destination")): unq(t.get("data", "")) for t in blocks(task, "template")}
    cfg = templates.get("local/connector.json")
    if cfg is None:
        fail(rel, "no template with destination local/connector.json")
    else:
        if 'unix://{{ env "NOMAD_SECRETS_DIR" }}/api.sock' not in cfg:
            fail(rel, "connector.json does not use the Task API socket")
        if 'password_file": "{{ env "NOMAD_SECRETS_DIR" }}/dpapi-password' not in cfg:
            fail(rel, "connector.json does not read the password from secrets/dpapi-password")
        if re.search(r'"(token|password)"\s*:', cfg):
            fail(rel, "connector.json holds a secret in clear")
    pw = templates.get("secrets/dpapi-password")
    if pw is None:
        fail(rel, "no template with destination secrets/dpapi-password")
    elif '{{ with nomadVar "nomad/jobs/haproxy-nomad-connector" }}{{ .dpapi_password }}{{ end }}' not in pw:
        fail(rel, "the password template does not read nomad/jobs/haproxy-nomad-connector's dpapi_password")
    passed(since, f"{rel}: system job, constraint, identity, checks, templates ({driver})")


def check_policy(rel: str) -> None:
    since = len(FAILURES)
    doc = load_hcl(rel)
    if doc is None:
        return
    extra = {k for k in doc if not k.startswith("__")} - {"namespace"}
    if extra:
        fail(rel, f"rules beyond namespace: {sorted(extra)} (the connector only reads)")
    namespaces = labelled(doc, "namespace")
    if not namespaces:
        fail(rel, "no namespace rule")
    for name, body in namespaces.items():
        caps = [unq(c) for c in body.get("capabilities", [])]
        if caps != ["read-job"] or "policy" in body or {k for k in body if not k.startswith("__")} - {"capabilities"}:
            fail(rel, f'namespace "{name}": want exactly capabilities = ["read-job"], got {body}')
    passed(since, f"{rel}: namespace rules granting exactly read-job")


def check_dev() -> None:
    since = len(FAILURES)
    rel = "deploy/dev/dataplaneapi.yml"
    try:
        dpapi = yaml.safe_load((ROOT / rel).read_text())
    except Exception as e:  # noqa: BLE001
        fail(rel, f"does not parse as YAML: {e}")
        return
    api = dpapi.get("dataplaneapi") or {}
    if api.get("host") != "127.0.0.1" or api.get("port") != 5555:
        fail(rel, "the Data Plane API must listen on 127.0.0.1:5555")
    users = api.get("user") or []
    if not any(u.get("name") == "admin" and u.get("password") for u in users):
        fail(rel, "no admin user with a password")
    maps_dir = (api.get("resources") or {}).get("maps_dir")
    haproxy = dpapi.get("haproxy") or {}
    if haproxy.get("config_file") != "/usr/local/etc/haproxy/haproxy.cfg":
        fail(rel, "haproxy.config_file is not the image's /usr/local/etc/haproxy/haproxy.cfg")
    reload = haproxy.get("reload") or {}
    if not reload.get("reload_cmd"):
        fail(rel, "no haproxy.reload.reload_cmd")
    cfg = (ROOT / "deploy/dev/haproxy.cfg").read_text()
    if f"command /usr/local/bin/dataplaneapi -f /usr/local/etc/haproxy/{Path(rel).name}" not in cfg:
        fail("deploy/dev/haproxy.cfg", "its `program api` does not start dataplaneapi with this file")
    for kind in ("exact", "prefix", "suffix", "regex"):
        if f"({maps_dir}/hnc_{kind}.map)" not in cfg:
            fail("deploy/dev/haproxy.cfg", f"no rule using {maps_dir}/hnc_{kind}.map (the DPAPI maps_dir)")
        if not (ROOT / f"deploy/dev/maps/hnc_{kind}.map").is_file():
            fail("deploy/dev/maps", f"hnc_{kind}.map missing")
    connector = json.loads((ROOT / "deploy/dev/connector.json").read_text())
    if connector["haproxy"].get("maps_dir") != maps_dir:
        fail("deploy/dev/connector.json", f"haproxy.maps_dir is not the DPAPI's {maps_dir}")
    if connector["haproxy"].get("address") != f"http://{api.get('host')}:{api.get('port')}":
        fail("deploy/dev/connector.json", "haproxy.address is not the Data Plane API's")
    passed(since, f"{rel}: parsed; listener, user, maps_dir and config agree with haproxy.cfg and connector.json")

    since = len(FAILURES)
    rel = "deploy/dev/demo.nomad.hcl"
    doc = load_hcl(rel)
    if doc is None:
        return
    job = labelled(doc, "job").get("demo", {})
    group = next(iter(labelled(job, "group").values()), {})
    if group.get("count") != 2:
        fail(rel, "the demo group must run two instances")
    tags = [unq(t) for s in blocks(group, "service") for t in s.get("tags", [])]
    for want in ("haproxy.enable=true", "haproxy.domain=demo.localhost"):
        if want not in tags:
            fail(rel, f"service lacks tag {want}")
    task = next(iter(labelled(group, "task").values()), {})
    if unq(task.get("driver")) != "raw_exec":
        fail(rel, "the demo task must use raw_exec (enabled by nomad agent -dev)")
    passed(since, f"{rel}: two raw_exec instances tagged for demo.localhost")


def main() -> int:
    check_job("deploy/haproxy-nomad-connector.nomad.hcl", "docker")
    check_job("deploy/haproxy-nomad-connector.exec.nomad.hcl", "exec")
    check_policy("deploy/acl-policy.hcl")
    check_dev()
    for line in CHECKED:
        print(f"ok   {line}")
    for line in FAILURES:
        print(f"FAIL {line}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
