//! Control permission of one field device (SPEC §5), as a pure state machine.
//!
//! Inputs are what remotes and the field device do; outputs are the notifications to send
//! and the audit records to write. At most one master exists by construction (`master` is
//! an `Option`), and every change notifies every remote in session.

use fieldlink_proto::{DeviceId, ErrorCode, Permission};

/// Why the master changed, written to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The field device was in automatic mode and granted a request.
    AutoGrant,
    /// The field application granted master (`set_operation_permission(remote, 1)`).
    FieldGrant,
    /// The field application demoted the master to guest.
    FieldRevoke,
    /// The master released it.
    Released,
    /// The master's session ended (disconnect, logout, lost connection).
    MasterLeft,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::AutoGrant => "auto_grant",
            Cause::FieldGrant => "field_grant",
            Cause::FieldRevoke => "field_revoke",
            Cause::Released => "released",
            Cause::MasterLeft => "master_left",
        }
    }
}

/// What the caller must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Tell a remote its level and the current master.
    Notify {
        remote: DeviceId,
        self_permission: Permission,
        master: Option<DeviceId>,
    },
    /// Ask the field application to decide (application mode).
    AskField { remote: DeviceId, level: Permission },
    /// Tell the field device who is master now.
    FieldMaster { master: Option<DeviceId> },
    /// Record a change of master.
    Audit {
        previous: Option<DeviceId>,
        master: Option<DeviceId>,
        actor: DeviceId,
        cause: Cause,
    },
}

/// Permission state of one field device.
#[derive(Debug, Clone)]
pub struct FieldControl {
    field: DeviceId,
    /// Field device's `auto_permission`: grant whatever is requested.
    auto_grant: bool,
    field_online: bool,
    master: Option<DeviceId>,
    /// Remotes in session, in join order.
    members: Vec<DeviceId>,
}

impl FieldControl {
    pub fn new(field: DeviceId) -> Self {
        Self {
            field,
            auto_grant: true,
            field_online: false,
            master: None,
            members: Vec::new(),
        }
    }

    pub fn master(&self) -> Option<&DeviceId> {
        self.master.as_ref()
    }
    pub fn members(&self) -> &[DeviceId] {
        &self.members
    }
    pub fn is_member(&self, remote: &DeviceId) -> bool {
        self.members.contains(remote)
    }
    pub fn field_online(&self) -> bool {
        self.field_online
    }
    /// Nothing worth keeping: no field device and nobody in session.
    pub fn is_idle(&self) -> bool {
        !self.field_online && self.members.is_empty()
    }

    fn level_of(&self, remote: &DeviceId) -> Permission {
        if self.master.as_ref() == Some(remote) {
            Permission::Master
        } else {
            Permission::Guest
        }
    }

    fn notify(&self, remote: &DeviceId) -> Out {
        Out::Notify {
            remote: remote.clone(),
            self_permission: self.level_of(remote),
            master: self.master.clone(),
        }
    }

    fn change_master(
        &mut self,
        new: Option<DeviceId>,
        actor: DeviceId,
        cause: Cause,
        out: &mut Vec<Out>,
    ) {
        if self.master == new {
            return;
        }
        let previous = std::mem::replace(&mut self.master, new);
        out.push(Out::Audit {
            previous,
            master: self.master.clone(),
            actor,
            cause,
        });
        for m in &self.members {
            out.push(self.notify(m));
        }
        if self.field_online {
            out.push(Out::FieldMaster {
                master: self.master.clone(),
            });
        }
    }

    /// The field device logged in (or out). On login it learns the current master; if
    /// nobody is master, the first automatic remote in session asks for it.
    pub fn field_presence(
        &mut self,
        online: bool,
        auto_grant: bool,
        first_auto: Option<DeviceId>,
    ) -> Vec<Out> {
        self.field_online = online;
        self.auto_grant = auto_grant;
        let mut out = Vec::new();
        if online {
            out.push(Out::FieldMaster {
                master: self.master.clone(),
            });
            if self.master.is_none() {
                if let Some(r) = first_auto.filter(|r| self.is_member(r)) {
                    // Cannot fail: r is a member and the field is online.
                    out.extend(self.request(&r, Permission::Master).unwrap_or_default());
                }
            }
        }
        out
    }

    /// A remote opened a session. It learns the current state; an automatic remote
    /// (`auto_request`) then asks for master.
    pub fn join(&mut self, remote: &DeviceId, auto_request: bool) -> Vec<Out> {
        if !self.is_member(remote) {
            self.members.push(remote.clone());
        }
        let mut out = vec![self.notify(remote)];
        if auto_request && self.field_online && self.master.as_ref() != Some(remote) {
            out.extend(self.request(remote, Permission::Master).unwrap_or_default());
        }
        out
    }

    /// A remote's session ended; a leaving master frees master.
    pub fn leave(&mut self, remote: &DeviceId) -> Vec<Out> {
        let mut out = Vec::new();
        if !self.is_member(remote) {
            return out;
        }
        self.members.retain(|m| m != remote);
        if self.master.as_ref() == Some(remote) {
            self.change_master(None, remote.clone(), Cause::MasterLeft, &mut out);
        }
        out
    }

    /// A remote asks for a level: master goes to the field's decision (granted at once in
    /// automatic mode); guest releases master if it holds it.
    pub fn request(&mut self, remote: &DeviceId, level: Permission) -> Result<Vec<Out>, ErrorCode> {
        if !self.is_member(remote) {
            return Err(ErrorCode::NotInSession);
        }
        let mut out = Vec::new();
        match level {
            Permission::Guest => {
                if self.master.as_ref() == Some(remote) {
                    self.change_master(None, remote.clone(), Cause::Released, &mut out);
                } else {
                    out.push(self.notify(remote));
                }
            }
            Permission::Master if self.master.as_ref() == Some(remote) => {
                out.push(self.notify(remote))
            }
            Permission::Master => {
                if !self.field_online {
                    return Err(ErrorCode::FieldOffline);
                }
                if self.auto_grant {
                    self.change_master(
                        Some(remote.clone()),
                        remote.clone(),
                        Cause::AutoGrant,
                        &mut out,
                    );
                } else {
                    out.push(Out::AskField {
                        remote: remote.clone(),
                        level,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The field device sets a remote's level (`set_operation_permission`).
    pub fn set(&mut self, remote: &DeviceId, level: Permission) -> Result<Vec<Out>, ErrorCode> {
        if !self.is_member(remote) {
            return Err(ErrorCode::NotInSession);
        }
        let mut out = Vec::new();
        match level {
            Permission::Master => self.change_master(
                Some(remote.clone()),
                self.field.clone(),
                Cause::FieldGrant,
                &mut out,
            ),
            Permission::Guest if self.master.as_ref() == Some(remote) => {
                self.change_master(None, self.field.clone(), Cause::FieldRevoke, &mut out)
            }
            Permission::Guest => {}
        }
        if out.is_empty() {
            // No change: still confirm the state to the remote the field answered.
            out.push(self.notify(remote));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn id(s: &str) -> DeviceId {
        s.parse().unwrap()
    }

    #[test]
    fn auto_mode_hand_over_and_master_leaving() {
        let (a, b) = (id("p/a"), id("p/b"));
        let mut fc = FieldControl::new(id("p/f"));
        fc.field_presence(true, true, None);
        fc.join(&a, true);
        assert_eq!(fc.master(), Some(&a));
        let out = fc.join(&b, false);
        assert_eq!(out.len(), 1, "a guest joining changes nothing: {out:?}");
        let out = fc.request(&b, Permission::Master).unwrap();
        assert_eq!(fc.master(), Some(&b));
        assert!(out.contains(&Out::Notify {
            remote: a.clone(),
            self_permission: Permission::Guest,
            master: Some(b.clone())
        }));
        assert!(out.contains(&Out::Notify {
            remote: b.clone(),
            self_permission: Permission::Master,
            master: Some(b.clone())
        }));
        assert!(out.contains(&Out::Audit {
            previous: Some(a.clone()),
            master: Some(b.clone()),
            actor: b.clone(),
            cause: Cause::AutoGrant
        }));
        let out = fc.leave(&b);
        assert_eq!(fc.master(), None);
        assert!(out.iter().any(|o| matches!(
            o,
            Out::Audit {
                cause: Cause::MasterLeft,
                ..
            }
        )));
        assert!(out.contains(&Out::Notify {
            remote: a.clone(),
            self_permission: Permission::Guest,
            master: None
        }));
    }

    #[test]
    fn application_mode_asks_the_field() {
        let (a, f) = (id("p/a"), id("p/f"));
        let mut fc = FieldControl::new(f.clone());
        fc.field_presence(true, false, None);
        fc.join(&a, false);
        let out = fc.request(&a, Permission::Master).unwrap();
        assert_eq!(
            out,
            vec![Out::AskField {
                remote: a.clone(),
                level: Permission::Master
            }]
        );
        assert_eq!(fc.master(), None);
        fc.set(&a, Permission::Master).unwrap();
        assert_eq!(fc.master(), Some(&a));
        let out = fc.set(&a, Permission::Guest).unwrap();
        assert!(out.iter().any(
            |o| matches!(o, Out::Audit { cause: Cause::FieldRevoke, actor, .. } if *actor == f)
        ));
        assert_eq!(
            fc.set(&id("p/x"), Permission::Master),
            Err(ErrorCode::NotInSession)
        );
    }

    #[test]
    fn offline_field_cannot_grant() {
        let a = id("p/a");
        let mut fc = FieldControl::new(id("p/f"));
        fc.join(&a, true);
        assert_eq!(fc.master(), None);
        assert_eq!(
            fc.request(&a, Permission::Master),
            Err(ErrorCode::FieldOffline)
        );
        fc.field_presence(true, true, Some(a.clone()));
        assert_eq!(
            fc.master(),
            Some(&a),
            "first automatic remote asks when the field arrives"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(usize, bool),
        Leave(usize),
        Request(usize, bool),
        Set(usize, bool),
        Field(bool, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, any::<bool>()).prop_map(|(r, a)| Op::Join(r, a)),
            (0..4usize).prop_map(Op::Leave),
            (0..4usize, any::<bool>()).prop_map(|(r, m)| Op::Request(r, m)),
            (0..4usize, any::<bool>()).prop_map(|(r, m)| Op::Set(r, m)),
            (any::<bool>(), any::<bool>()).prop_map(|(o, a)| Op::Field(o, a)),
        ]
    }

    proptest! {
        /// Random sequences never yield two masters, and every remote's view (built only
        /// from the notifications it received) matches the field's view.
        #[test]
        fn views_agree(ops in proptest::collection::vec(op(), 1..80)) {
            let remotes: Vec<DeviceId> = (0..4).map(|i| id(&format!("p/r{i}"))).collect();
            let mut fc = FieldControl::new(id("p/f"));
            let mut views: HashMap<DeviceId, (Permission, Option<DeviceId>)> = HashMap::new();
            let mut field_view: Option<DeviceId> = None;
            for op in ops {
                let lvl = |m: bool| if m { Permission::Master } else { Permission::Guest };
                let out = match op {
                    Op::Join(r, a) => fc.join(&remotes[r], a),
                    Op::Leave(r) => { views.remove(&remotes[r]); fc.leave(&remotes[r]) }
                    Op::Request(r, m) => fc.request(&remotes[r], lvl(m)).unwrap_or_default(),
                    Op::Set(r, m) => fc.set(&remotes[r], lvl(m)).unwrap_or_default(),
                    Op::Field(online, auto) => {
                        let first = fc.members().first().cloned();
                        fc.field_presence(online, auto, first)
                    }
                };
                for o in out {
                    match o {
                        Out::Notify { remote, self_permission, master } => {
                            prop_assert!(fc.is_member(&remote), "notified a non-member");
                            views.insert(remote, (self_permission, master));
                        }
                        Out::FieldMaster { master } => field_view = master,
                        _ => {}
                    }
                }
                let masters = views.values().filter(|v| v.0 == Permission::Master).count();
                prop_assert!(masters <= 1);
                for m in fc.members() {
                    let v = views.get(m).cloned();
                    let expect = (if fc.master() == Some(m) { Permission::Master } else { Permission::Guest }, fc.master().cloned());
                    prop_assert_eq!(v, Some(expect));
                }
                if fc.field_online() {
                    prop_assert_eq!(field_view.as_ref(), fc.master());
                }
                if let Some(m) = fc.master() {
                    prop_assert!(fc.is_member(m));
                }
            }
        }
    }
}
