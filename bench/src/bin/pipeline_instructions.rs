//! Runs one path's 64-byte packets through `Pipeline::process_batch` for the
//! instructions-per-packet figure: a warm-up, then `batches` batches of 64 through
//! [`counted_batch`], the one function `bench/instructions.sh` tells callgrind to
//! count (`--toggle-collect`). Instructions do not swing with the machine's load as
//! times do, so this is the number a change to the pipeline has to beat.
//!
//! Usage: `pipeline_instructions <encap|decap|snat|unsnat|dnat|nodeport|npreply>
//! [batches]` (all but `encap`/`decap`: established flows, 10,000 of them, picked
//! at random; `dnat` is a pod's packets to a ClusterIP, 1,000 Services in the
//! table; `nodeport` outside clients' packets to a NodePort with a local endpoint
//! (`Cluster` policy), `npreply` the endpoint's replies).

use std::hint::black_box;
use std::process::ExitCode;

use hybridway_bench::pipeline_traffic::{
    Batch, POD_PORT, Rng, T0, UPLINK, established, fill_decap, fill_encap, node_port_flows,
    pod_to_remote_pod, service_flows, tables, vxlan_from_remote_pod, write_masquerade,
    write_node_port_reply, write_reply, write_to_node_port, write_to_service,
};
use hybridway_dataplane::frame::{Frame, PortId};
use hybridway_dataplane::pipeline::Pipeline;
use hybridway_dataplane::tables::{SnatConfig, Tables};
use hybridway_dataplane::time::Now;
use hybridway_dataplane::verdict::Verdict;

const WARM_UP: usize = 100;
const FLOWS: usize = 10_000;

/// The only code callgrind counts.
#[inline(never)]
fn counted_batch(
    p: &mut Pipeline,
    frames: &mut [Frame<'_>],
    t: &Tables,
    now: Now,
    verdicts: &mut [Verdict],
) {
    p.process_batch(frames, t, now, verdicts);
}

fn run(
    p: &mut Pipeline,
    t: &Tables,
    batches: usize,
    in_port: PortId,
    mut fill: impl FnMut(&mut Batch),
    want: Verdict,
) {
    let mut batch = Batch::new();
    for _ in 0..WARM_UP {
        fill(&mut batch);
        batch.run(in_port, |frames, verdicts| {
            p.process_batch(frames, t, T0, verdicts)
        });
    }
    for _ in 0..batches {
        fill(&mut batch);
        batch.run(in_port, |frames, verdicts| {
            counted_batch(p, frames, t, T0, verdicts)
        });
        black_box(&batch.verdicts);
    }
    batch.assert_all(want);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!(
            "usage: pipeline_instructions <encap|decap|snat|unsnat|dnat|nodeport|npreply> [batches]"
        );
        return ExitCode::FAILURE;
    };
    let batches = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000usize);
    let t = tables();
    let to_uplink = Verdict::Forward { port: UPLINK };
    let to_pod = Verdict::Forward { port: POD_PORT };
    match path.as_str() {
        "encap" => {
            let mut p = Pipeline::new(0, &SnatConfig::default());
            let packet = pod_to_remote_pod(64);
            run(
                &mut p,
                &t,
                batches,
                POD_PORT,
                |b| fill_encap(b, &packet),
                to_uplink,
            );
        }
        "decap" => {
            let mut p = Pipeline::new(0, &SnatConfig::default());
            let packet = vxlan_from_remote_pod(64);
            run(
                &mut p,
                &t,
                batches,
                UPLINK,
                |b| fill_decap(b, &packet),
                to_pod,
            );
        }
        "snat" => {
            let (mut p, _) = established(FLOWS, &t);
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let fill = |b: &mut Batch| {
                b.fill(|_, buf| write_masquerade(buf, rng.next() as usize % FLOWS));
            };
            run(&mut p, &t, batches, POD_PORT, fill, to_uplink);
        }
        "unsnat" => {
            let (mut p, nat_ports) = established(FLOWS, &t);
            let mut rng = Rng(0x1234_5678_9abc_def1);
            let fill = |b: &mut Batch| {
                b.fill(|_, buf| {
                    let i = rng.next() as usize % FLOWS;
                    write_reply(buf, i, nat_ports[i])
                });
            };
            run(&mut p, &t, batches, UPLINK, fill, to_pod);
        }
        "dnat" => {
            let (mut p, t) = service_flows(FLOWS);
            let mut rng = Rng(0x2545_f491_4f6c_dd1d);
            let fill = |b: &mut Batch| {
                b.fill(|_, buf| write_to_service(buf, 1024 + (rng.next() as usize % FLOWS) as u16));
            };
            run(&mut p, &t, batches, POD_PORT, fill, to_uplink);
        }
        "nodeport" => {
            let (mut p, t, _) = node_port_flows(FLOWS);
            let mut rng = Rng(0x5851_f42d_4c95_7f2d);
            let fill = |b: &mut Batch| {
                b.fill(|_, buf| write_to_node_port(buf, rng.next() as usize % FLOWS));
            };
            run(&mut p, &t, batches, UPLINK, fill, to_pod);
        }
        "npreply" => {
            let (mut p, t, gateway_ports) = node_port_flows(FLOWS);
            let mut rng = Rng(0x1405_7b7e_f767_814f);
            let fill = |b: &mut Batch| {
                b.fill(|_, buf| {
                    write_node_port_reply(buf, gateway_ports[rng.next() as usize % FLOWS])
                });
            };
            run(&mut p, &t, batches, POD_PORT, fill, to_uplink);
        }
        other => {
            eprintln!(
                "unknown path {other}: encap, decap, snat, unsnat, dnat, nodeport or npreply"
            );
            return ExitCode::FAILURE;
        }
    }
    println!("{path}: {} packets counted", batches * 64);
    ExitCode::SUCCESS
}
