//! `check-config --connect` for the runtime driver: the sockets answer and HAProxy accepts the
//! configuration as it is on disk.

use super::RuntimeDriver;

impl RuntimeDriver {
    /// Each check's result as a line (`Ok`: found; `Err`: the problem).
    pub async fn preflight(&self) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        let master = self.cfg.master_socket.display().to_string();
        match self.show_proc().await {
            Ok(_) => out.push(Ok(format!("master socket {master} answers"))),
            Err(e) => out.push(Err(format!("master socket {master}: {e}"))),
        }
        let admin = self.cfg.admin_socket.as_ref().map_or_else(
            || "the master's worker".to_string(),
            |p| p.display().to_string(),
        );
        match self.show("show info").await {
            Ok(_) => out.push(Ok(format!("admin commands through {admin} answer"))),
            Err(e) => out.push(Err(format!("admin commands through {admin}: {e}"))),
        }
        if self.cfg.fragment.exists() {
            match self.validate(&self.cfg.fragment).await {
                Ok(()) => out.push(Ok(format!(
                    "haproxy -c accepts the configuration with {}",
                    self.cfg.fragment.display()
                ))),
                Err(e) => out.push(Err(e.to_string())),
            }
        } else {
            out.push(Ok(format!(
                "{} does not exist yet: the first pass creates it",
                self.cfg.fragment.display()
            )));
        }
        out
    }
}
