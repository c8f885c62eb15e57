//! A device's channel list as the platform keeps it while the device is online, changed
//! by Catalog subscriptions' `Notify` items (ADD, DEL, UPDATE, ON, OFF...) and replaced by
//! fresh Catalog answers. Each channel keeps its slot (its stream index, which receivers
//! name) for as long as the list lives: a deleted channel leaves its slot marked
//! [`REMOVED`], and a channel that comes back takes its old slot again, so no receiver is
//! ever moved to another camera by someone else's change.

use crate::manscdp::CatalogItem;

/// The `status` of a slot whose channel was deleted.
pub const REMOVED: &str = "DEL";

/// What happened to one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new channel, or a deleted one back (a stream that may now be played).
    Added(usize),
    /// Deleted: its receivers end.
    Removed(usize),
    /// Its name, status or other details changed.
    Updated(usize),
}

/// True if the slot holds a channel (it was not deleted).
pub fn present(item: &CatalogItem) -> bool {
    item.status != REMOVED
}

/// Applies a `Notify`'s items to `list`; at most `max` slots. Unknown events and events
/// for channels not in the list (other than ADD and UPDATE) change nothing.
pub fn notify(list: &mut Vec<CatalogItem>, items: &[CatalogItem], max: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for it in items {
        let slot = list.iter().position(|c| c.device_id == it.device_id);
        let event = it.event.to_ascii_uppercase();
        match (event.as_str(), slot) {
            ("ADD" | "UPDATE", Some(i)) => {
                let was = present(&list[i]);
                let mut new = it.clone();
                new.event.clear();
                if new.status.is_empty() || new.status == REMOVED {
                    new.status = if was {
                        list[i].status.clone()
                    } else {
                        "ON".into()
                    };
                }
                if !was {
                    list[i] = new;
                    out.push(Change::Added(i));
                } else if list[i] != new {
                    list[i] = new;
                    out.push(Change::Updated(i));
                }
            }
            ("ADD" | "UPDATE", None) if list.len() < max && !it.device_id.is_empty() => {
                let mut new = it.clone();
                new.event.clear();
                if new.status.is_empty() || new.status == REMOVED {
                    new.status = "ON".into();
                }
                list.push(new);
                out.push(Change::Added(list.len() - 1));
            }
            ("DEL", Some(i)) if present(&list[i]) => {
                list[i].status = REMOVED.into();
                out.push(Change::Removed(i));
            }
            ("ON" | "OFF" | "VLOST" | "DEFECT", Some(i))
                if present(&list[i]) && list[i].status != event =>
            {
                list[i].status = event;
                out.push(Change::Updated(i));
            }
            _ => {}
        }
    }
    out
}

/// Replaces `list` with a complete Catalog answer: channels still there keep their slots
/// (updated if they changed), missing ones are removed, new ones take deleted slots of the
/// same id or are appended; at most `max` slots.
pub fn refresh(list: &mut Vec<CatalogItem>, full: &[CatalogItem], max: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for (i, c) in list.iter_mut().enumerate() {
        if present(c) && !full.iter().any(|f| f.device_id == c.device_id) {
            c.status = REMOVED.into();
            out.push(Change::Removed(i));
        }
    }
    for it in full {
        let mut it = it.clone();
        it.event = "ADD".into();
        out.extend(notify(list, std::slice::from_ref(&it), max));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, event: &str, status: &str) -> CatalogItem {
        CatalogItem {
            device_id: id.into(),
            name: format!("cam {id}"),
            status: status.into(),
            event: event.into(),
            ..Default::default()
        }
    }

    #[test]
    fn channels_keep_their_slots_through_changes() {
        let mut list = vec![item("a", "", "ON"), item("b", "", "ON")];
        let ch = notify(
            &mut list,
            &[
                item("a", "DEL", ""),
                item("c", "ADD", "ON"),
                item("b", "OFF", ""),
            ],
            8,
        );
        assert_eq!(
            ch,
            [Change::Removed(0), Change::Added(2), Change::Updated(1)]
        );
        assert_eq!(list[0].status, REMOVED);
        assert_eq!(list[1].status, "OFF");
        assert_eq!(list[2].device_id, "c");
        // A deleted channel that comes back takes its slot again.
        assert_eq!(
            notify(&mut list, &[item("a", "ADD", "")], 8),
            [Change::Added(0)]
        );
        assert_eq!(list[0].status, "ON");
        // Repeats change nothing; events for unknown channels are ignored.
        assert!(notify(&mut list, &[item("b", "OFF", ""), item("z", "DEL", "")], 8).is_empty());
        assert!(notify(&mut list, &[item("a", "ADD", "ON")], 8).is_empty());
        // Bounded.
        assert!(notify(&mut list, &[item("d", "ADD", "ON")], 3).is_empty());
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn a_fresh_answer_removes_the_missing_and_appends_the_new() {
        let mut list = vec![item("a", "", "ON"), item("b", "", "ON")];
        let ch = refresh(&mut list, &[item("b", "", "OFF"), item("c", "", "ON")], 8);
        assert_eq!(
            ch,
            [Change::Removed(0), Change::Updated(1), Change::Added(2)]
        );
        assert_eq!(
            list.iter().map(|c| c.status.as_str()).collect::<Vec<_>>(),
            [REMOVED, "OFF", "ON"]
        );
        assert!(refresh(&mut list, &[item("b", "", "OFF"), item("c", "", "ON")], 8).is_empty());
    }
}
