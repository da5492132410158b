//! The shard's side of the durable log (`--data-dir`): which owner outputs go to the log
//! or wait for it, and what the log's writer asks of the shard.

use crate::metrics::ShardStats;
use crate::room::{ClusterOut, RoomOut, ToShard};
use crate::store::{Host, Journal};

use super::Shard;

/// Takes what the log must see: a [`RoomOut::Log`] record is appended; under
/// `--fsync always` an answer (ack, error, query answer, API result, here or on another
/// node) that follows a record not yet synced is held until it is. Deliveries and join
/// acks never wait: fan-out does not depend on the disk, and a join ack must keep its
/// place before the frames that follow it. Returns what is to be sent now.
pub(super) fn intercept(journal: &Journal<RoomOut>, out: RoomOut, stats: &ShardStats) -> Option<RoomOut> {
    match out {
        RoomOut::Log(record) => {
            journal.append(&record, stats);
            None
        }
        out @ (RoomOut::Shard(_, ToShard::ToConn { .. } | ToShard::Reply { .. })
        | RoomOut::Cluster(
            ClusterOut::ToConn { .. } | ClusterOut::Published { .. } | ClusterOut::AfterBus { .. },
        )) if journal.holding() => {
            journal.hold(out);
            None
        }
        out => Some(out),
    }
}

impl Host<RoomOut> for Shard {
    fn release(&self, items: Vec<RoomOut>) {
        for out in items {
            self.send_out(out);
        }
    }

    fn checkpoint(&self, out: &mut Vec<u8>) {
        let now = super::Services::wall_ms();
        self.owned.borrow().checkpoint(now, &mut |record| {
            record.encode(out);
        });
    }

    fn retained(&self) -> u64 {
        let owned = self.owned.borrow();
        let (bytes, messages) = owned.history_usage();
        // Each frame's record adds its header and the room name; each room a reset.
        bytes as u64 + messages as u64 * 64 + owned.len() as u64 * 128
    }

    fn stats(&self) -> &ShardStats {
        &self.stats
    }
}
