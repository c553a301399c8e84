//! Disconnect at every point: a valid session replayed and cut after every message and
//! inside every message; and connect/disconnect floods.

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost_user_sync::frontend::{DriverQueue, FrontendMemory};
use vhost_user_sync::protocol::payload::{MemoryTableDesc, VringAddr};
use vhost_user_sync::protocol::{virtio, FrontendRequest as R, ProtocolFeatures};

use crate::hostile::{
    class, connect, eventfd, exercise, state_body, u64_body, wait_snapshot, Case, Ctx, ALL,
    NEED_REPLY, PLAIN, T,
};

pub static CASES: &[Case] = &[
    Case {
        name: "disconnect_after_and_inside_every_message",
        class: class::DISCONNECT,
        kinds: ALL,
        run: disconnect_after_and_inside_every_message,
    },
    Case {
        name: "connect_disconnect_flood",
        class: class::CONNECT_FLOOD,
        kinds: ALL,
        run: connect_disconnect_flood,
    },
];

/// One message of a recorded session.
struct Msg {
    req: R,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<File>,
}

impl Msg {
    fn new(req: R, body: Vec<u8>, fds: Vec<File>) -> Msg {
        Msg {
            req,
            flags: NEED_REPLY,
            body,
            fds,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.req.number().to_ne_bytes().to_vec();
        b.extend_from_slice(&self.flags.to_ne_bytes());
        b.extend_from_slice(&(self.body.len() as u32).to_ne_bytes());
        b.extend_from_slice(&self.body);
        b
    }
}

/// A full valid session for `kind`: negotiation, memory, every ring of the device set
/// up and started, then a ring stopped.
fn session(ctx: &Ctx<'_>, mem: &FrontendMemory) -> Vec<Msg> {
    let mut probe = connect(ctx.socket);
    let features = probe.get_features().expect("features") & !virtio::LOG_ALL;
    let protocol = probe.get_protocol_features().expect("protocol").bits()
        & (ProtocolFeatures::REPLY_ACK.bits()
            | ProtocolFeatures::MQ.bits()
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS.bits());
    drop(probe);
    let mut s = vec![
        Msg::new(R::GET_FEATURES, vec![], vec![]),
        Msg::new(R::GET_PROTOCOL_FEATURES, vec![], vec![]),
        Msg::new(R::SET_PROTOCOL_FEATURES, u64_body(protocol), vec![]),
        Msg::new(R::SET_OWNER, vec![], vec![]),
        Msg::new(R::SET_FEATURES, u64_body(features), vec![]),
        Msg::new(
            R::SET_MEM_TABLE,
            MemoryTableDesc {
                regions: mem.regions().to_vec(),
            }
            .encode(),
            mem.files()
                .iter()
                .map(|f| f.try_clone().expect("dup"))
                .collect(),
        ),
    ];
    for i in 0..ctx.num_queues() {
        let q = DriverQueue::new(mem, i as u16, 16).expect("queue");
        let addr: VringAddr = q.vring_addr(mem);
        s.push(Msg::new(R::SET_VRING_NUM, state_body(i, 16), vec![]));
        s.push(Msg::new(R::SET_VRING_BASE, state_body(i, 0), vec![]));
        s.push(Msg::new(R::SET_VRING_ADDR, addr.encode(), vec![]));
        s.push(Msg::new(
            R::SET_VRING_CALL,
            u64_body(i.into()),
            vec![eventfd()],
        ));
        s.push(Msg::new(
            R::SET_VRING_KICK,
            u64_body(i.into()),
            vec![eventfd()],
        ));
        s.push(Msg::new(R::SET_VRING_ENABLE, state_body(i, 1), vec![]));
    }
    s.push(Msg::new(R::GET_VRING_BASE, state_body(0, 0), vec![]));
    s.push(Msg::new(R::GET_QUEUE_NUM, vec![], vec![]));
    for m in &mut s {
        if m.req.shape().reply == vhost_user_sync::protocol::ReplyRule::Always {
            m.flags = PLAIN;
        }
    }
    s
}

/// Sends `bytes` of a message, with its fds on the first chunk.
fn send_part(fe: &vhost_user_sync::frontend::Frontend, bytes: &[u8], fds: &[File]) {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    fe.connection()
        .send_message(
            bytes,
            &[],
            &[],
            if raw.is_empty() { None } else { Some(&raw) },
        )
        .expect("send");
}

fn disconnect_after_and_inside_every_message(ctx: &Ctx<'_>) {
    let mem = FrontendMemory::new(&[(0, 1 << 20)]).expect("memory");
    let script = session(ctx, &mem);
    let pid = ctx.proc.pid();
    let base = ctx.base;
    wait_snapshot(pid, base, T, "probe connection");
    // The whole session, then every prefix of it, each followed by a cut.
    for k in (0..=script.len()).rev() {
        // Cut points inside message k: part of the header, the header alone, half the
        // body.
        let mut cuts: Vec<Option<usize>> = vec![None];
        if let Some(m) = script.get(k) {
            cuts.push(Some(5));
            if !m.body.is_empty() {
                cuts.push(Some(12));
                cuts.push(Some(12 + m.body.len() / 2));
            }
        }
        for cut in cuts {
            let fe = connect(ctx.socket);
            for m in &script[..k] {
                send_part(&fe, &m.bytes(), &m.fds);
            }
            if let (Some(n), Some(m)) = (cut, script.get(k)) {
                send_part(&fe, &m.bytes()[..n], &m.fds);
            }
            // Replies the backend sent are left unread: the close races them.
            drop(fe);
            exercise(ctx.kind, ctx.socket);
            let what = format!(
                "cut {} message {k} ({})",
                cut.map_or("after".to_string(), |n| format!("{n} bytes into")),
                script.get(k).map_or("end", |m| m.req.name())
            );
            wait_snapshot(pid, base, T, &what);
        }
    }
}

fn connect_disconnect_flood(ctx: &Ctx<'_>) {
    let pid = ctx.proc.pid();
    for _ in 0..200 {
        drop(connect(ctx.socket));
    }
    for _ in 0..100 {
        let mut fe = connect(ctx.socket);
        fe.set_owner().expect("SET_OWNER");
        fe.get_features().expect("GET_FEATURES");
    }
    for _ in 0..50 {
        let fe = connect(ctx.socket);
        send_part(&fe, &R::GET_FEATURES.number().to_ne_bytes(), &[]);
    }
    // Connections that leave while their rings run.
    for _ in 0..20 {
        let mut h = crate::hostile::Healthy::open(ctx.kind, ctx.socket);
        h.pump();
    }
    wait_snapshot(pid, ctx.base, T, "connect/disconnect flood");
}
