//! Pure parsers for the show commands the driver reads: `show backend`, `show servers state`,
//! `show stat`, `show proc` (master) and `show map`. Columns are found by header name, because
//! later HAProxy versions append columns; 2.6 and 3.0 print the same layouts (CONTRACTS §3.5–3.6).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{AdminState, Endpoint, OpState};

/// A reply that is not the dump it should be (an error message, a truncated answer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected answer to `{command}`: {detail}")]
pub struct ParseError {
    pub command: &'static str,
    pub detail: String,
}

fn err(command: &'static str, detail: impl Into<String>) -> ParseError {
    ParseError {
        command,
        detail: detail.into(),
    }
}

fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// `show backend`: `# name`, then one backend per line.
pub fn backends(text: &str) -> Result<Vec<String>, ParseError> {
    let mut lines = text.lines();
    match lines.next().map(str::trim) {
        Some("# name") => {}
        _ => return Err(err("show backend", excerpt(text))),
    }
    Ok(lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// `None` when the address is not an IP (an FQDN server, `-`).
    pub endpoint: Option<Endpoint>,
    pub op: OpState,
    pub admin: AdminState,
    /// `srv_check_state` has both "configured" (0x02) and "enabled" (0x04).
    pub check_enabled: bool,
    pub weight: u16,
}

/// `srv_admin_state` bits that mean maintenance (forced, inherited, config, DNS, hostname).
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
/// `srv_admin_state` bits that mean drain (forced, inherited).
const ADMIN_DRAIN: u32 = 0x08 | 0x10;
const CHECK_CONFIGURED: u32 = 0x02;
const CHECK_ENABLED: u32 = 0x04;

pub fn admin_state(mask: u32) -> AdminState {
    if mask & ADMIN_MAINT != 0 {
        AdminState::Maint
    } else if mask & ADMIN_DRAIN != 0 {
        AdminState::Drain
    } else {
        AdminState::Ready
    }
}

pub fn op_state(code: u32) -> OpState {
    match code {
        2 => OpState::Up,
        1 => OpState::Starting,
        3 => OpState::Stopping,
        _ => OpState::Down,
    }
}

/// `show servers state` (all backends): the version line `1`, a `# `-prefixed header, then one
/// space-separated line per server.
pub fn servers_state(text: &str) -> Result<Vec<ServerState>, ParseError> {
    const CMD: &str = "show servers state";
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("1") {
        return Err(err(CMD, excerpt(text)));
    }
    let header: Vec<&str> = match lines.next().and_then(|l| l.strip_prefix("# ")) {
        Some(h) => h.split_whitespace().collect(),
        // No server at all: HAProxy may print the version line alone.
        None => return Ok(Vec::new()),
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| err(CMD, format!("no column {name} in the header")))
    };
    let (be, sv, addr, op, admin, weight, check, port) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_check_state")?,
        col("srv_port")?,
    );
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .ok_or_else(|| err(CMD, format!("short line: {line}")))
        };
        let num = |i: usize| -> Result<u32, ParseError> {
            get(i)?
                .parse()
                .map_err(|_| err(CMD, format!("not a number in column {i}: {line}")))
        };
        let endpoint = match (get(addr)?.parse::<IpAddr>(), get(port)?.parse::<u16>()) {
            (Ok(a), Ok(p)) if p != 0 => Some(Endpoint::new(a, p)),
            _ => None,
        };
        let check_state = num(check)?;
        out.push(ServerState {
            backend: get(be)?.to_string(),
            server: get(sv)?.to_string(),
            endpoint,
            op: op_state(num(op)?),
            admin: admin_state(num(admin)?),
            check_enabled: check_state & (CHECK_CONFIGURED | CHECK_ENABLED)
                == (CHECK_CONFIGURED | CHECK_ENABLED),
            weight: u16::try_from(num(weight)?).unwrap_or(u16::MAX),
        });
    }
    Ok(out)
}

/// The `show stat` columns the driver reads, per proxy row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatRow {
    pub proxy: String,
    /// `FRONTEND`, `BACKEND` or a server name.
    pub name: String,
    pub sessions: u64,
    pub status: String,
    /// `http`, `tcp`, … (backend rows).
    pub mode: String,
    /// The balance algorithm (backend rows), e.g. `roundrobin`, `static-rr`, `source`.
    pub algo: String,
}

/// `show stat`: CSV with a `# pxname,svname,…` header, parsed by column name.
pub fn stat(text: &str) -> Result<Vec<StatRow>, ParseError> {
    const CMD: &str = "show stat";
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<&str> = match lines.next().and_then(|l| l.strip_prefix("# ")) {
        Some(h) if h.starts_with("pxname,") => h.split(',').collect(),
        _ => return Err(err(CMD, excerpt(text))),
    };
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need = |name: &str| col(name).ok_or_else(|| err(CMD, format!("no column {name}")));
    let (px, sv, scur, status) = (
        need("pxname")?,
        need("svname")?,
        need("scur")?,
        need("status")?,
    );
    let (mode, algo) = (col("mode"), col("algo"));
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: Option<usize>| i.and_then(|i| f.get(i)).copied().unwrap_or_default();
        out.push(StatRow {
            proxy: get(Some(px)).to_string(),
            name: get(Some(sv)).to_string(),
            sessions: get(Some(scur)).parse().unwrap_or(0),
            status: get(Some(status)).to_string(),
            mode: get(mode).to_string(),
            algo: get(algo).to_string(),
        });
    }
    Ok(out)
}

/// What `show proc` says about reloads and workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcState {
    pub master_pid: u32,
    /// The master's reload counter.
    pub reloads: u64,
    /// Failed reloads (`[failed: N]`).
    pub failed: u64,
    /// Current workers' PIDs (the `# workers` section), newest first as HAProxy lists them.
    pub workers: Vec<u32>,
    pub old_workers: Vec<u32>,
}

/// `show proc` on the master CLI (fixed-width columns, the same in 2.6 and 3.0).
pub fn proc(text: &str) -> Result<ProcState, ParseError> {
    const CMD: &str = "show proc";
    #[derive(PartialEq)]
    enum Section {
        Master,
        Workers,
        Old,
        Other,
    }
    let mut section = Section::Master;
    let mut state = ProcState::default();
    let mut saw_master = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("#<PID>") {
            continue;
        }
        if let Some(name) = line.strip_prefix('#') {
            section = match name.trim() {
                "workers" => Section::Workers,
                "old workers" => Section::Old,
                _ => Section::Other,
            };
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let pid = f.first().and_then(|p| p.parse::<u32>().ok());
        match (&section, f.get(1).copied(), pid) {
            (Section::Master, Some("master"), Some(pid)) => {
                saw_master = true;
                state.master_pid = pid;
                state.reloads = f.get(2).and_then(|r| r.parse().ok()).unwrap_or(0);
                state.failed = line
                    .split_once("[failed:")
                    .and_then(|(_, rest)| rest.split(']').next())
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
            }
            (Section::Workers, Some("worker"), Some(pid)) => state.workers.push(pid),
            (Section::Old, Some("worker"), Some(pid)) => state.old_workers.push(pid),
            _ => {}
        }
    }
    if !saw_master {
        return Err(err(CMD, excerpt(text)));
    }
    Ok(state)
}

/// `show map <file>`: `<pointer> <key> <value>` per entry, in the map's order.
pub fn map_entries(text: &str) -> Result<Vec<(String, String)>, ParseError> {
    const CMD: &str = "show map";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(ptr), Some(key), Some(value)) if ptr.starts_with("0x") => {
                out.push((key.to_string(), value.trim().to_string()));
            }
            _ => return Err(err(CMD, excerpt(text))),
        }
    }
    Ok(out)
}

/// `show info`'s `Pid:`.
pub fn info_pid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
}

/// Sessions per (backend, server) from `show stat` rows.
pub fn sessions(rows: &[StatRow]) -> BTreeMap<(String, String), u64> {
    rows.iter()
        .filter(|r| r.name != "FRONTEND" && r.name != "BACKEND")
        .map(|r| ((r.proxy.clone(), r.name.clone()), r.sessions))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE_HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";

    #[test]
    fn servers_state_as_printed_by_both_versions() {
        // Verbatim from 2.6.12 and 3.0.11 (identical): a static server with check enabled, then
        // a dynamic one just added (MAINT, check configured but not enabled).
        let text = format!(
            "1\n{STATE_HEADER}\n3 be 1 hnc_127.0.0.1_9 127.0.0.1 0 0 3 3 1 8 2 0 6 0 0 0 - 9 - 0 0 - - 0\n\
             3 be 2 x 10.0.0.5 0 1 1 1 0 1 0 0 2 0 0 0 - 5 - 0 0 - - 0\n\n"
        );
        let s = servers_state(&text).expect("parses");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].server, "hnc_127.0.0.1_9");
        assert_eq!(s[0].endpoint.map(|e| e.port), Some(9));
        assert_eq!(s[0].op, OpState::Down);
        assert_eq!(s[0].admin, AdminState::Ready);
        assert!(s[0].check_enabled);
        assert_eq!(s[0].weight, 3);
        assert_eq!(s[1].admin, AdminState::Maint);
        assert!(!s[1].check_enabled);
        // 2.6 may omit the trailing blank line; an error message is not a dump.
        assert_eq!(
            servers_state(&format!("1\n{STATE_HEADER}\n")).expect("empty"),
            vec![]
        );
        assert!(servers_state("Can't find backend.\n").is_err());
        assert_eq!(admin_state(0x08), AdminState::Drain);
        assert_eq!(admin_state(0x09), AdminState::Maint);
    }

    #[test]
    fn stat_by_column_name() {
        let text = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,\n\
fe,FRONTEND,,,0,0,9979,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,\n\
be,hnc_127.0.0.1_9,0,0,7,0,,0,0,0,,0,,0,0,0,0,DRAIN,3,1,0,1,1,1,1,,1,3,1,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,,,,,,,,,127.0.0.1:9,,http,,\n\
be,BACKEND,0,0,7,0,998,0,0,0,0,0,,0,0,0,0,UP,0,0,0,,1,1,1,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,\n\n";
        let rows = stat(text).expect("parses");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].sessions, 7);
        assert_eq!(rows[1].status, "DRAIN");
        assert_eq!(rows[2].mode, "http");
        assert_eq!(rows[2].algo, "roundrobin");
        assert_eq!(
            sessions(&rows),
            [(("be".to_string(), "hnc_127.0.0.1_9".to_string()), 7)].into()
        );
        assert!(stat("Permission denied\n").is_err());
    }

    #[test]
    fn proc_counts_reloads_and_workers() {
        // 2.6.12 after one reload, with an old worker still finishing its sessions.
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
19578           master          1 [failed: 0]   0d00h00m02s     2.6.12-1+deb12u4\n\
# workers\n\
19622           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n\
# old workers\n\
19580           worker          1               0d00h00m02s     2.6.12-1+deb12u4\n\
# programs\n\n";
        let p = proc(text).expect("parses");
        assert_eq!(p.master_pid, 19578);
        assert_eq!(p.reloads, 1);
        assert_eq!(p.failed, 0);
        assert_eq!(p.workers, vec![19622]);
        assert_eq!(p.old_workers, vec![19580]);
        // 3.0.11's layout, failed reload counted.
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
19732           master          3 [failed: 1]   0d00h00m02s     3.0.11-9e587df \n\
# workers\n\
19804           worker          0               0d00h00m01s     3.0.11-9e587df \n\
# programs\n";
        let p = proc(text).expect("parses");
        assert_eq!((p.reloads, p.failed), (3, 1));
        assert_eq!(p.workers, vec![19804]);
        assert!(proc("").is_err());
    }

    #[test]
    fn map_and_backend_dumps() {
        let m = map_entries("0x557292bf45e0 ^a\\.b$ be\n0x7f76f40465b0 api.test web_1\n\n")
            .expect("parses");
        assert_eq!(
            m,
            vec![
                ("^a\\.b$".to_string(), "be".to_string()),
                ("api.test".to_string(), "web_1".to_string())
            ]
        );
        assert!(map_entries("Unknown map identifier. Please use #<id> or <file>.\n").is_err());
        assert_eq!(map_entries("\n").expect("empty"), vec![]);
        assert_eq!(
            backends("# name\nbe\nbe2\n\n").expect("parses"),
            vec!["be".to_string(), "be2".to_string()]
        );
        assert!(backends("Unknown command\n").is_err());
        assert_eq!(info_pid("Name: HAProxy\nPid: 42\n"), Some(42));
    }
}
