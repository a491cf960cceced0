//! Applying a full list of 2,000 services × 25 instances to the catalog store: into an empty
//! store (first sync), and again with identical data (a periodic resync of an idle cluster,
//! where every service keeps its `Arc`).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use haproxy_nomad_connector::catalog::{Instance, Service, ServiceKey, Store};

const SERVICES: usize = 2_000;
const INSTANCES: usize = 25;

fn full_list() -> BTreeMap<ServiceKey, Service> {
    (0..SERVICES)
        .map(|s| {
            let name = format!("service-{s:04}");
            let instances = (0..INSTANCES)
                .map(|i| {
                    let alloc = format!("{s:08x}-{i:04x}-4b8e-9b7f-2a1d0c9e8f71");
                    Instance {
                        id: format!("_nomad-task-{alloc}-group-{name}-{name}-http"),
                        job_id: format!("{name}-job"),
                        alloc_id: alloc,
                        node_id: format!("node-{}", i % 7),
                        datacenter: "dc1".into(),
                        tags: vec![
                            "haproxy.enable=true".into(),
                            format!("haproxy.domain={name}.example.com"),
                        ],
                        address: format!("10.{}.{}.{}", s / 256, s % 256, i),
                        port: 20_000 + i as u16,
                        create_index: 100 + s as u64,
                        modify_index: 100 + s as u64,
                        nomad_check: None,
                    }
                })
                .collect();
            (
                ServiceKey::new(format!("ns-{}", s % 4), name),
                Service { instances },
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let list = full_list();
    let mut group = c.benchmark_group("catalog");
    group.sample_size(20);
    group.bench_function("replace_all 2000x25 into an empty store", |b| {
        b.iter_batched(
            || (Store::new("haproxy"), list.clone()),
            |(mut store, list)| {
                black_box(store.replace_all(list, 1));
                store
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("replace_all 2000x25 unchanged (resync)", |b| {
        let mut store = Store::new("haproxy");
        store.replace_all(list.clone(), 1);
        b.iter_batched(
            || list.clone(),
            |list| black_box(store.replace_all(list, 1)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("snapshot of 2000 services", |b| {
        let mut store = Store::new("haproxy");
        store.replace_all(list.clone(), 1);
        b.iter(|| black_box(store.snapshot()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
