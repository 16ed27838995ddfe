/**
 * @packageDocumentation
 * P2P blob distribution (docs/p2p.md): `naiad peer` on every node — the fsdaemon's registry mirror
 * (docs/mirror-contract.md), sharing blob pieces with the other nodes — and `naiad scheduler`, one
 * per cluster, which tracks hosts, tasks and pieces, picks parents and protects the origin.
 *
 * Layers:
 * - `protocol/`: task ids, piece and block arithmetic, Range parsing, piece digests (pure);
 * - `scheduler/`: the pure evaluator, the scheduler's state and decisions (`SchedulerService`),
 *   its gRPC adapter and server;
 * - `peer/`: piece store, origin pool, scheduler client, download engine, mirror and upload
 *   handlers, and `Peer`, their composition;
 * - `grpc/`: the naiad.p2p.v1 proto (loaded at runtime) and conversions;
 * - `cli.ts`: the `peer`, `scheduler` and `preheat` commands.
 *
 * @example
 *   const peer = new Peer({ logger }, validateConfig(peerConfigSchema, { scheduler: { address: 'sched:65010' } }))
 *   await peer.start()   // mirror on 127.0.0.1:65001
 *   await peer.close()
 */
export { Peer, type PeerDeps, type PeerOverrides } from './peer/peer.ts'
export { SchedulerServer, type SchedulerServerOptions } from './scheduler/server.ts'
export { SchedulerService } from './scheduler/service.ts'
export { createEvaluator, type Evaluator, type CandidateHost } from './scheduler/evaluator.ts'
export { peerConfigSchema, schedulerConfigSchema, type PeerConfig, type SchedulerConfig } from './config.ts'
export { registerP2pCommands } from './cli.ts'
export * from './protocol/index.ts'
