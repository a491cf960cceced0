//! The pure core at scale: build the desired model from 2,000 services × 25 instances and diff it
//! against a live state with 1% drift. Target: ≤ 20 ms median.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use haproxy_nomad_connector::catalog::{Instance, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::desired::{Policy, build};
use haproxy_nomad_connector::model::AdminState;
use haproxy_nomad_connector::plan::{diff, sim::live_of};

const SERVICES: usize = 2_000;
const INSTANCES: usize = 25;

fn snapshot() -> Snapshot {
    let mut services = std::collections::BTreeMap::new();
    for s in 0..SERVICES {
        let name = format!("svc-{s}");
        let ns = if s % 10 == 0 { "prod" } else { "default" };
        let tags = vec![
            "haproxy.enable=true".to_string(),
            format!("haproxy.domain={name}.example.com"),
            "haproxy.check.path=/health".to_string(),
            "haproxy.check.interval=5s".to_string(),
        ];
        let instances = (0..INSTANCES)
            .map(|i| Instance {
                id: format!("_nomad-task-{s}-{i}"),
                job_id: name.clone(),
                alloc_id: format!("alloc-{s}-{i}"),
                node_id: "node".into(),
                datacenter: "dc1".into(),
                tags: tags.clone(),
                address: format!("10.{}.{}.{}", s / 250, s % 250, i + 1),
                port: 20_000 + i as u16,
                create_index: 1 + s as u64,
                modify_index: 1 + s as u64,
                nomad_check: None,
            })
            .collect();
        services.insert(ServiceKey::new(ns, name), Arc::new(Service { instances }));
    }
    Snapshot {
        services,
        synced: true,
        stale: None,
        denied: false,
        index: 1,
        check_health: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let policy = Policy::default();
    let d = build(&snap, &Default::default(), &policy).expect("build");
    let mut live = live_of(&d);
    // 1% drift: every 100th server removed or put in maintenance, every 100th route missing.
    let mut n = 0usize;
    for b in live.backends.values_mut() {
        let names: Vec<String> = b.servers.keys().cloned().collect();
        for name in names {
            n += 1;
            if n.is_multiple_of(200) {
                b.servers.remove(&name);
            } else if n % 200 == 100
                && let Some(s) = b.servers.get_mut(&name)
            {
                s.admin = AdminState::Maint;
            }
        }
    }
    let keys: Vec<_> = live.routes.keys().step_by(100).cloned().collect();
    for k in keys {
        live.routes.remove(&k);
    }
    let now = Instant::now();
    let plan = diff(
        &build(&snap, &live, &policy).expect("build"),
        &live,
        now,
        &policy,
    );
    assert_eq!(
        plan.ops.len(),
        250 + 250 + 20,
        "1% drift: {:?}",
        plan.summary()
    );

    let mut group = c.benchmark_group("core");
    group.sample_size(20);
    group.bench_function("desired+diff 2000x25, 1% drift", |b| {
        b.iter(|| {
            let d = build(black_box(&snap), black_box(&live), &policy).expect("build");
            black_box(diff(&d, &live, now, &policy))
        })
    });
    group.bench_function("desired only 2000x25", |b| {
        b.iter(|| build(black_box(&snap), black_box(&live), &policy).expect("build"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
