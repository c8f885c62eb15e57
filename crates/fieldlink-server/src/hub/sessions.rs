//! Who is online and who is in session with whom: logging in and out (a second login of
//! the same device replaces the first), opening and closing operation sessions, presence
//! notices, and carrying out the permission state machine's decisions
//! ([`crate::permission::FieldControl`]), audit records included. Does not touch media or
//! control data; a session that closes asks `receivers` to disconnect its receivers.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::mpsc;

use fieldlink_proto::{DeviceId, ErrorCode, Permission, RateLimiter, Role, ServerMsg, StreamState};

use super::{Client, ClientInfo, ConnId, Hub, Outbound};
use crate::permission::{FieldControl, Out};
use crate::store::{now_ms, AuditEntry};

/// Most sessions one remote device may hold at once.
const MAX_SESSIONS_PER_REMOTE: usize = 64;

impl Hub {
    pub(super) fn register(&mut self, info: ClientInfo, out: mpsc::Sender<Outbound>) -> ConnId {
        if let Some(old) = self.by_device.get(&info.device).copied() {
            if let Some(c) = self.clients.get(&old) {
                let _ = c.out.try_send(Outbound::Close(
                    ErrorCode::Replaced,
                    "the same device logged in again".into(),
                ));
            }
            self.unregister(old);
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let device = info.device.clone();
        let role = info.role;
        let auto = info.auto_permission;
        self.clients.insert(
            conn,
            Client {
                info,
                out,
                peer: None,
                limiter: RateLimiter::default(),
                paced: VecDeque::new(),
                sessions: Vec::new(),
                late: HashMap::new(),
                last_warning: None,
                receivers: Vec::new(),
                external: None,
                frames_in: Vec::new(),
            },
        );
        self.by_device.insert(device.clone(), conn);
        if role == Role::Remote {
            self.remotes.insert(conn);
        }
        tracing::info!(device = %device, role = role.as_str(), conn, "device online");
        if role == Role::Field {
            let members = self
                .fields
                .get(&device)
                .map(|fc| fc.members().to_vec())
                .unwrap_or_default();
            let first_auto = members
                .iter()
                .find(|m| {
                    self.by_device
                        .get(*m)
                        .and_then(|c| self.clients.get(c))
                        .is_some_and(|c| c.info.auto_permission)
                })
                .cloned();
            let fc = self
                .fields
                .entry(device.clone())
                .or_insert_with(|| FieldControl::new(device.clone()));
            let outs = fc.field_presence(true, auto, first_auto);
            for m in members {
                self.send(conn, ServerMsg::RemoteJoined { remote_id: m });
            }
            // Remotes learn the field is online before any permission change it brings.
            self.broadcast_presence(&device, true);
            self.apply(&device, outs);
        }
        conn
    }

    pub(super) fn unregister(&mut self, conn: ConnId) {
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        self.peers.remove(&conn);
        self.timers.remove(conn);
        self.paced.remove(&conn);
        self.remotes.remove(&conn);
        self.by_addr.retain(|_, c| *c != conn);
        self.by_bond.retain(|_, c| *c != conn);
        let device = client.info.device.clone();
        if self.by_device.get(&device) == Some(&conn) {
            self.by_device.remove(&device);
        }
        tracing::info!(device = %device, conn, "device offline");
        self.diags_end_for(&device, conn, client.info.role);
        match client.info.role {
            Role::Field => {
                if let Some(fc) = self.fields.get_mut(&device) {
                    let outs = fc.field_presence(false, true, None);
                    self.apply(&device, outs);
                }
                self.broadcast_presence(&device, false);
                self.set_watchers(
                    &device,
                    None,
                    StreamState::Failed,
                    Some("field device offline"),
                );
                self.drop_idle(&device);
            }
            Role::Remote => {
                for gwid in client.sessions {
                    self.leave(&device, &gwid);
                }
            }
        }
    }

    pub(super) fn connect(&mut self, conn: ConnId, gwid: &DeviceId) -> Result<(), ErrorCode> {
        let client = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        if client.sessions.contains(gwid) {
            return Ok(());
        }
        if client.sessions.len() >= MAX_SESSIONS_PER_REMOTE {
            return Err(ErrorCode::BadRequest);
        }
        client.sessions.push(gwid.clone());
        let remote = client.info.device.clone();
        let auto = client.info.auto_permission;
        let fc = self
            .fields
            .entry(gwid.clone())
            .or_insert_with(|| FieldControl::new(gwid.clone()));
        let online = fc.field_online();
        let outs = fc.join(&remote, auto);
        self.send(
            conn,
            ServerMsg::Presence {
                field_id: gwid.clone(),
                online,
            },
        );
        if let Some(f) = self.by_device.get(gwid).copied() {
            self.send(
                f,
                ServerMsg::RemoteJoined {
                    remote_id: remote.clone(),
                },
            );
        }
        tracing::info!(remote = %remote, field = %gwid, "session opened");
        self.apply(gwid, outs);
        Ok(())
    }

    pub(super) fn disconnect(&mut self, conn: ConnId, gwid: &DeviceId) -> Result<(), ErrorCode> {
        let client = self.clients.get_mut(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if !client.sessions.contains(gwid) {
            return Err(ErrorCode::NotInSession);
        }
        client.sessions.retain(|g| g != gwid);
        let remote = client.info.device.clone();
        self.leave(&remote, gwid);
        Ok(())
    }

    pub(super) fn leave(&mut self, remote: &DeviceId, gwid: &DeviceId) {
        if let Some(conn) = self.by_device.get(remote).copied() {
            let fds: Vec<u32> = self
                .clients
                .get(&conn)
                .map(|c| {
                    c.receivers
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.want.as_ref().is_some_and(|(f, _)| f == gwid))
                        .map(|(i, _)| i as u32)
                        .collect()
                })
                .unwrap_or_default();
            let _ = self.unwatch(conn, Some(&fds));
        }
        if let Some(fc) = self.fields.get_mut(gwid) {
            let outs = fc.leave(remote);
            self.apply(gwid, outs);
        }
        if let Some(f) = self.by_device.get(gwid).copied() {
            self.send(
                f,
                ServerMsg::RemoteLeft {
                    remote_id: remote.clone(),
                },
            );
        }
        tracing::info!(remote = %remote, field = %gwid, "session closed");
        self.drop_idle(gwid);
    }

    pub(super) fn drop_idle(&mut self, field: &DeviceId) {
        if self.fields.get(field).is_some_and(|fc| fc.is_idle()) {
            self.fields.remove(field);
        }
    }

    pub(super) fn request_permission(
        &mut self,
        conn: ConnId,
        gwid: &DeviceId,
        level: Permission,
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Remote {
            return Err(ErrorCode::WrongRoleForCall);
        }
        let remote = client.info.device.clone();
        let fc = self.fields.get_mut(gwid).ok_or(ErrorCode::NotInSession)?;
        let outs = fc.request(&remote, level)?;
        self.apply(gwid, outs);
        Ok(())
    }

    pub(super) fn set_permission(
        &mut self,
        conn: ConnId,
        remote: &DeviceId,
        level: Permission,
    ) -> Result<(), ErrorCode> {
        let client = self.clients.get(&conn).ok_or(ErrorCode::NotLoggedIn)?;
        if client.info.role != Role::Field {
            return Err(ErrorCode::WrongRoleForCall);
        }
        let field = client.info.device.clone();
        let fc = self.fields.get_mut(&field).ok_or(ErrorCode::NotInSession)?;
        let outs = fc.set(remote, level)?;
        self.apply(&field, outs);
        Ok(())
    }

    /// Carries out what the permission state machine asked for.
    pub(super) fn apply(&mut self, field: &DeviceId, outs: Vec<Out>) {
        for o in outs {
            match o {
                Out::Notify {
                    remote,
                    self_permission,
                    master,
                } => self.send_to_device(
                    &remote,
                    ServerMsg::Permission {
                        field_id: field.clone(),
                        self_permission,
                        master_id: master,
                    },
                ),
                Out::AskField { remote, level } => self.send_to_device(
                    field,
                    ServerMsg::PermissionRequest {
                        remote_id: remote,
                        level,
                    },
                ),
                Out::FieldMaster { master } => {
                    self.send_to_device(field, ServerMsg::MasterChanged { master_id: master })
                }
                Out::Audit {
                    previous,
                    master,
                    actor,
                    cause,
                } => {
                    tracing::info!(field = %field, ?previous, ?master, actor = %actor, cause = cause.as_str(), "master changed");
                    let entry = AuditEntry {
                        ts_ms: now_ms(),
                        field_id: field.to_string(),
                        previous_master: previous.map(|d| d.to_string()),
                        master: master.map(|d| d.to_string()),
                        actor: actor.to_string(),
                        cause: cause.as_str().to_string(),
                    };
                    if self.audit.try_send((field.project.clone(), entry)).is_err() {
                        tracing::error!(field = %field, "audit queue full: permission change not recorded");
                    }
                }
            }
        }
    }

    pub(super) fn broadcast_presence(&mut self, field: &DeviceId, online: bool) {
        let members: HashSet<DeviceId> = self
            .fields
            .get(field)
            .map(|fc| fc.members().iter().cloned().collect())
            .unwrap_or_default();
        let targets: Vec<ConnId> = self
            .remotes
            .iter()
            .filter(|id| {
                self.clients.get(id).is_some_and(|c| {
                    c.info.device.project == field.project
                        && (c.info.sees_all_fields || members.contains(&c.info.device))
                })
            })
            .copied()
            .collect();
        for t in targets {
            self.send(
                t,
                ServerMsg::Presence {
                    field_id: field.clone(),
                    online,
                },
            );
        }
    }
}
