# ACL policy of haproxy-nomad-connector: exactly what it calls, all reads.
#   GET /v1/services, GET /v1/service/:name, GET /v1/job/:id and the event stream with
#   topic=Service                                   -> namespace:read-job
#   GET /v1/status/leader                           -> no ACL
# Watching a namespace list instead of every namespace: replace "*" with one block per namespace.
# Bind it to the job's workload identity (see the README, "Deploy"):
#   nomad acl policy apply -namespace default -job haproxy-nomad-connector \
#     -description "haproxy-nomad-connector: read services and jobs" \
#     haproxy-nomad-connector deploy/acl-policy.hcl
# The DPAPI password variable at nomad/jobs/haproxy-nomad-connector needs no rule: a job's
# workload identity can always read the variables under its own nomad/jobs/<job> path.
namespace "*" {
  capabilities = ["read-job"]
}
