//! Broker administration for the demo and benchmarks on a local RabbitMQ: fresh vhosts and users,
//! through `rabbitmqctl` (the management plugin is not assumed).

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot run rabbitmqctl (is RabbitMQ installed on this machine?): {0}")]
    Missing(std::io::Error),
    #[error("rabbitmqctl {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

fn rabbitmqctl(args: &[&str]) -> Result<(), AdminError> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(AdminError::Missing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AdminError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Deletes (if present) and creates `vhost`, granting `user` full rights on it.
pub fn recreate_vhost(vhost: &str, user: &str) -> Result<(), AdminError> {
    let _ = rabbitmqctl(&["delete_vhost", vhost]);
    rabbitmqctl(&["add_vhost", vhost])?;
    rabbitmqctl(&["set_permissions", "-p", vhost, user, ".*", ".*", ".*"])
}

/// Creates (or resets the password of) `user` with full rights on `vhost`.
pub fn ensure_user(user: &str, password: &str, vhost: &str) -> Result<(), AdminError> {
    if rabbitmqctl(&["add_user", user, password]).is_err() {
        rabbitmqctl(&["change_password", user, password])?;
    }
    rabbitmqctl(&["set_permissions", "-p", vhost, user, ".*", ".*", ".*"])
}

pub fn delete_vhost(vhost: &str) -> Result<(), AdminError> {
    rabbitmqctl(&["delete_vhost", vhost])
}

/// Makes the broker close every client connection of `vhost` (a connection-loss fault).
pub fn close_all_connections(vhost: &str, why: &str) -> Result<(), AdminError> {
    rabbitmqctl(&["close_all_connections", "--vhost", vhost, why])
}
