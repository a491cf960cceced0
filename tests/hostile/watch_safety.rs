//! Issue 11, items 4 and 5, end to end on both drivers: a Nomad problem in one namespace, or a
//! mass disappearance, never deletes routing at once.
//!
//! - `namespace_loss`: with `nomad.namespaces=*` (the default), the token losing `read-job` on one
//!   tenant's namespace. Nomad then silently leaves the namespace out of its `*` lists; the
//!   connector confirms with a read of the namespace alone (403), keeps the tenant, holds every
//!   removal and reports `nomad_denied`, while additions elsewhere still apply. When access
//!   returns it converges again, and a namespace that really empties is removed.
//! - `mass_delete_hold`: every instance of a service vanishing at once is held for
//!   `reconcile.mass_delete_hold` of real time and a fresh Nomad relist, not for a few passes at
//!   the debounce pace; then it is applied.

mod namespace_loss {
    use crate::hostile::harness::{Driver, Lab};
    use crate::support::nomad::Reg;

    const TENANT_TAGS: &[&str] = &["haproxy.enable=true", "haproxy.domain=tenant.test"];
    /// The backend of service `tenant` in namespace `tenant`.
    const BACKEND: &str = "tenant.tenant";

    fn tenant(lab: &Lab, i: usize, instance: usize) -> Reg {
        let (addr, port) = lab.address(instance);
        Reg::new("tenant", "tenant", &format!("t{i}"), &addr, port).tags(Some(TENANT_TAGS))
    }

    fn readyz(lab: &Lab) -> (u16, String) {
        lab.connector.get("/readyz").unwrap_or((0, String::new()))
    }

    fn losing_read_on_a_namespace_deletes_nothing(driver: Driver) {
        let lab = Lab::start(driver, &[("NOMAD_TOKEN", "t")]);
        // ACLs on, with the token reading both namespaces (one step: no window without the token).
        lab.nomad.grant("t", &["default", "tenant"]);
        let tenants = [tenant(&lab, 0, 2), tenant(&lab, 1, 3)];
        lab.nomad.register(tenants.clone());
        lab.wait("the tenant routed with 2 instances", |l| {
            l.serving(BACKEND).len() == 2 && l.routed("tenant.test", BACKEND)
        });
        lab.connector.wait_settled();

        // The token loses read-job on `tenant`.
        lab.nomad.deny_namespace("tenant", true);
        // A change elsewhere (default) makes the connector relist: `tenant` is missing from `*`.
        lab.nomad.register([lab.healthy(2)]);
        lab.wait("the healthy service still gains an instance", |l| {
            l.serving("healthy").len() == 3
        });
        lab.wait("not ready: Nomad denied", |l| {
            let (status, body) = readyz(l);
            status == 503 && body.contains("nomad_denied")
        });
        let log = lab.connector.log_text();
        assert!(
            log.contains("namespace vanished from the `*` list and Nomad refuses to read it"),
            "the warning names the lost namespace:\n{log}"
        );
        // Time for several passes and relists: the tenant stays, and so does everything owned.
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert_eq!(
            lab.serving(BACKEND).len(),
            2,
            "the tenant keeps its routing"
        );
        assert!(lab.routed("tenant.test", BACKEND));
        // Removals are held everywhere while the catalog is not trusted.
        lab.nomad.deregister(&[&lab.healthy(0).id]);
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_eq!(
            lab.serving("healthy").len(),
            3,
            "nothing owned is removed while a namespace cannot be read"
        );

        // Access comes back: ready again, and the held removal is applied.
        lab.nomad.deny_namespace("tenant", false);
        lab.wait("ready again", |l| readyz(l).0 == 200);
        lab.wait("the held removal applied", |l| {
            l.serving("healthy").len() == 2
        });
        assert_eq!(lab.serving(BACKEND).len(), 2);

        // The tenant really leaves (token still valid): its routing goes.
        lab.nomad
            .deregister(&[tenants[0].id.as_str(), tenants[1].id.as_str()]);
        lab.wait("the emptied namespace removed", |l| {
            l.present(BACKEND).is_empty()
        });
        assert_eq!(readyz(&lab).0, 200);
        let log = lab.connector.log_text();
        assert!(!log.contains("panicked"), "the connector panicked:\n{log}");
    }

    #[test]
    fn runtime() {
        losing_read_on_a_namespace_deletes_nothing(Driver::Runtime);
    }

    #[test]
    fn dataplane() {
        losing_read_on_a_namespace_deletes_nothing(Driver::Dataplane);
    }
}

mod mass_delete_hold {
    use std::time::{Duration, Instant};

    use crate::hostile::harness::{Driver, Lab};

    fn a_mass_removal_waits_for_the_hold_in_real_time(driver: Driver) {
        let lab = Lab::start(driver, &[("RECONCILE_MASS_DELETE_HOLD", "3s")]);
        let ids = [lab.healthy(0).id, lab.healthy(1).id];
        let gone = Instant::now();
        lab.nomad.deregister(&[ids[0].as_str(), ids[1].as_str()]);
        lab.wait("held: not ready, mass_delete_held", |l| {
            l.connector
                .get("/readyz")
                .is_some_and(|(s, b)| s == 503 && b.contains("mass_delete_held"))
        });
        // Several resync passes (1 s) and debounced passes later: still serving.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            lab.serving("healthy").len(),
            2,
            "still serving halfway through the hold"
        );
        assert!(lab.routed("healthy.test", "healthy"));
        // Only removals are held: a brand-new service is routed meanwhile.
        lab.nomad.register([lab.newcomer()]);
        lab.wait("a brand-new service routed during the hold", |l| {
            l.serving("newcomer").len() == 1 && l.routed("newcomer.test", "newcomer")
        });
        lab.wait("the removal applied after the hold", |l| {
            l.serving("healthy").is_empty()
        });
        let took = gone.elapsed();
        assert!(
            took >= Duration::from_secs(3),
            "removed {took:?} after the deregistration; the hold is 3s"
        );
        let log = lab.connector.log_text();
        assert!(
            log.contains("asking Nomad for a fresh full relist"),
            "the hold asked for a relist:\n{log}"
        );
        assert!(!log.contains("panicked"), "the connector panicked:\n{log}");
    }

    #[test]
    fn runtime() {
        a_mass_removal_waits_for_the_hold_in_real_time(Driver::Runtime);
    }

    #[test]
    fn dataplane() {
        a_mass_removal_waits_for_the_hold_in_real_time(Driver::Dataplane);
    }
}
